"""A program checked as a file from a stranger before anything runs (issue 29).

``check_program(program)`` raises ``ProgramError`` naming the op and the tensor (or attribute) on
the first thing that does not match the op set's spec (``program/ops.py``):

* every Value record: a known integer dtype, a known role, activation bits in 2..16;
* every op's attributes: present, integers (not bools, floats or strings) in the range the op's
  semantics allow (strides and dilations >= 1, paddings >= 0, shifts in 0..62, ...), small
  enough that no backend allocates more than the input's size times the program's own sizes;
* every param tensor's dtype and shape against the op that reads it (conv weights int8 of rank 3 or
  4 matching the input's channels and the groups, biases [Cout], M and shift int64 [C] or [1],
  LayerNorm gamma / beta [C], the position table [H d_k, 2 max_len - 1]);
* every activation's channel count as the ops produce it from the input's features (shapes are
  propagated: [B, C, T] with time symbolic, images [B, C, T, F] with F known), and each op's output
  dtype against its Value record;
* the accumulator proof: with every activation inside its declared range (``Value.bits``,
  ``signed``; the input's range is the program's input bits), no conv / matmul accumulator leaves
  its dtype (a conv's bound is the exact extreme of each channel over the input's range, at most
  the converter's recorded ``meta["bound"]``) and no requantization, rescale or LayerNorm product leaves int64 (interval bounds, the
  same ones the converter proves and ``verify`` records).
"""
from __future__ import annotations

import torch

from .ops import DTYPES, OPS, Program, ProgramError

I64 = (1 << 63) - 1
ACC_MAX = {"int32": (1 << 31) - 1, "int64": I64}
MAX_DIM = 1 << 16        # channels, kernel taps, paddings, heads, positions
MAX_SHIFT = 62
T_MAX = 1 << 22          # frames (the converter's matmul_pv bound assumes fewer)
INT64_HEADROOM = 1 << 62  # the largest value a rescale or an add may reach (a bit of int64 to spare)


def _qrange(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _storage(bits: int, signed: bool) -> str:
    lo, hi = _qrange(bits, signed)
    for name, (a, b) in (("int8", (-128, 127)), ("int16", (-32768, 32767)), ("int32", (-(1 << 31), (1 << 31) - 1))):
        if a <= lo and hi <= b:
            return name
    return "int64"


def _int(where: str, name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProgramError(f"{where}: attribute {name!r} must be an integer, got {v!r}"[:300])
    if not lo <= v <= hi:
        raise ProgramError(f"{where}: attribute {name!r} = {v} outside {lo}..{hi}")
    return v


def _bool(where: str, name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ProgramError(f"{where}: attribute {name!r} must be true or false, got {v!r}"[:300])
    return v


def _tn(op, key: str) -> str:
    """the tensor's name in the file (from_state records it), else the param's"""
    return getattr(op, "param_keys", {}).get(key, key)


def _param(where: str, op, key: str, rank: int | None = None, dtypes=None, shape=None) -> torch.Tensor:
    t = op.params[key]
    tname = f"tensor {_tn(op, key)!r}"
    if dtypes is not None and t.dtype not in dtypes:
        raise ProgramError(f"{where}: {tname} ({key}) has dtype {str(t.dtype).replace('torch.', '')}, "
                           f"expected {' or '.join(str(d).replace('torch.', '') for d in dtypes)}")
    if rank is not None and t.dim() != rank:
        raise ProgramError(f"{where}: {tname} ({key}) has shape {tuple(t.shape)}, expected rank {rank}")
    if shape is not None and tuple(t.shape) not in [tuple(s) for s in shape]:
        raise ProgramError(f"{where}: {tname} ({key}) has shape {tuple(t.shape)}, expected "
                           f"{' or '.join(str(tuple(s)) for s in shape)}")
    return t


def _absmax(t: torch.Tensor) -> int:
    """max |t| as a Python int (|-2^63| does not fit int64: torch's abs() would wrap it)"""
    return max(abs(int(t.min())), abs(int(t.max()))) if t.numel() else 0


def _ms(where, op, C: int, bound: int) -> int:
    """M, shift [C] or [1]; the requantization product fits int64; returns the output's bound."""
    M = _param(where, op, "M", 1, (torch.int64,), [(C,), (1,)])
    S = _param(where, op, "shift", 1, (torch.int64,), [(C,), (1,)])
    if S.numel() and (int(S.min()) < 0 or int(S.max()) > MAX_SHIFT):
        raise ProgramError(f"{where}: tensor {_tn(op, 'shift')!r} (shift) outside 0..{MAX_SHIFT}")
    m = _absmax(M)
    if m > I64 or bound * m + (1 << 61) > I64:
        raise ProgramError(f"{where}: tensor {_tn(op, 'M')!r} (M): |acc| <= {bound} times |M| = {m} "
                           f"leaves int64")
    smin = int(S.min()) if S.numel() else 0
    return (bound * m + (1 << max(0, smin))) >> smin if S.numel() else 0


class _OpCheck:
    """One op under check: where it is (for messages), its attributes, its inputs' shapes, its output
    record, and the two tables it adds its output to: `shape` (per value: ("bct", channels),
    ("img", channels, width), ("att", heads) or ("len",); channels and width None where unknown) and
    `bound` (per value: b with |v| <= b)."""

    def __init__(self, p: Program, i: int, op, shape: dict, bound: dict):
        self.where = f"op {i} ({op.kind} {op.name!r})"
        self.a = op.attrs
        if not isinstance(self.a, dict):
            raise ProgramError(f"{self.where}: attributes must be a mapping")
        self.p, self.op, self.shape, self.bound = p, op, shape, bound
        self.ins = [shape[n] for n in op.inputs]
        self.out = op.outputs[0]
        self.vout = p.values[self.out]

    def value(self, k: int):
        """the Value record of input k"""
        return self.p.values[self.op.inputs[k]]

    def in_bound(self, k: int) -> int:
        return self.bound[self.op.inputs[k]]

    def want(self, dt: str) -> None:
        if self.vout.dtype != dt:
            raise ProgramError(f"{self.where}: output {self.out!r} is declared {self.vout.dtype}, the op makes {dt}")

    def act_of(self, k: int) -> tuple:
        s = self.ins[k]
        if s[0] != "bct":
            raise ProgramError(f"{self.where}: input {self.op.inputs[k]!r} must be a [B, C, T] tensor, is {s[0]}")
        return s

    def set_out(self, shape: tuple, bound: int | None = None) -> None:
        self.shape[self.out] = shape
        if bound is not None:
            self.bound[self.out] = bound

    def out_act(self, C, b_out) -> None:
        """a [B, C, T] output bounded by b_out, and by its declared range where it is an activation"""
        if self.vout.role == "act":
            lo_, hi_ = _qrange(self.vout.bits, self.vout.signed)
            b_out = min(b_out, max(-lo_, hi_))
        self.set_out(("bct", C), b_out)

    def acc_max(self) -> int:
        """the accumulator dtype (attribute acc_dtype, the output's dtype): the largest value it holds"""
        if self.a["acc_dtype"] not in ACC_MAX:
            raise ProgramError(f"{self.where}: attribute 'acc_dtype' = {self.a['acc_dtype']!r}, expected int32 "
                               f"or int64"[:300])
        self.want(self.a["acc_dtype"])
        return ACC_MAX[self.a["acc_dtype"]]


def _check_mask_time(c: _OpCheck) -> None:
    if c.ins[1][0] != "len" or c.ins[0][0] not in ("bct", "img"):
        raise ProgramError(f"{c.where}: takes an activation and lengths")
    c.want(c.value(0).dtype)
    c.set_out(c.ins[0], c.in_bound(0))


def _check_frames(c: _OpCheck) -> None:
    if c.ins[0][0] != "len":
        raise ProgramError(f"{c.where}: takes lengths")
    for k, lo_ in (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
        _int(c.where, k, c.a[k], lo_, MAX_DIM)
    c.want("int64")
    c.set_out(("len",))


def _conv_geometry(c: _OpCheck, img: bool) -> tuple[int, int]:
    """checks the stride, padding (and, 1-d, dilation) attributes; (frequency stride, padding) of a
    conv2d, (1, 0) of a conv1d"""
    a, where = c.a, c.where
    if not img:
        _int(where, "stride", a["stride"], 1, MAX_DIM)
        _int(where, "padding", a["padding"], 0, MAX_DIM)
        _int(where, "dilation", a["dilation"], 1, MAX_DIM)
        return 1, 0
    st_, pd_ = a["stride"], a["padding"]
    if not (isinstance(st_, (list, tuple)) and len(st_) == 2 and isinstance(pd_, (list, tuple)) and len(pd_) == 2):
        raise ProgramError(f"{where}: stride and padding must be [time, freq] pairs")
    _, sF = (_int(where, "stride", v, 1, MAX_DIM) for v in st_)
    _, pF = (_int(where, "padding", v, 0, MAX_DIM) for v in pd_)
    return sF, pF


def _conv_weight_shape(c: _OpCheck, w: torch.Tensor, groups: int) -> None:
    """[Cout, Cin/groups, K...] reading the input's channel count, each dimension within MAX_DIM"""
    cout, cin_g, cin = int(w.shape[0]), int(w.shape[1]), c.ins[0][1]
    name = f"tensor {_tn(c.op, 'weight')!r} (weight)"
    if cout < 1 or cin_g < 1 or any(int(k) < 1 for k in w.shape[2:]) or cout % groups:
        raise ProgramError(f"{c.where}: {name} has shape "
                           f"{tuple(w.shape)}, not [Cout, Cin/{groups}, K...] with Cout a multiple of groups")
    if max(w.shape) > MAX_DIM:
        raise ProgramError(f"{c.where}: {name} shape {tuple(w.shape)} exceeds {MAX_DIM}")
    if cin is not None and cin_g * groups != cin:
        raise ProgramError(f"{c.where}: {name} shape {tuple(w.shape)} "
                           f"reads {cin_g * groups} channels ({groups} groups); input {c.op.inputs[0]!r} has {cin}")


def _conv_acc_bound(c: _OpCheck, w: torch.Tensor) -> int:
    """the exact extreme of each output channel over every input in the declared box [lo, hi]^n:
    b + hi sum(w > 0) + lo sum(w < 0), and the other way round; the largest over the channels"""
    cout = int(w.shape[0])
    bias = [0] * cout
    if "bias" in c.op.params and c.op.params["bias"] is not None:
        bias = [int(v) for v in _param(c.where, c.op, "bias", 1, (torch.int32, torch.int64), [(cout,)]).tolist()]
    vx = c.value(0)
    xlo, xhi = _qrange(vx.bits, vx.signed)
    w2 = w.to(torch.int64).reshape(cout, -1)
    wpos, wneg = w2.clamp(min=0).sum(1).tolist(), w2.clamp(max=0).sum(1).tolist()
    return max(max(abs(b + xhi * pw + xlo * nw), abs(b + xlo * pw + xhi * nw)) for b, pw, nw in zip(bias, wpos, wneg))


def _check_conv(c: _OpCheck) -> None:
    img = c.op.kind == "conv2d"
    s = c.ins[0]
    if s[0] != ("img" if img else "bct"):
        raise ProgramError(f"{c.where}: input {c.op.inputs[0]!r} is not a "
                           f"{'[B, C, T, F] image' if img else '[B, C, T] tensor'}")
    if c.value(0).role != "act":
        raise ProgramError(f"{c.where}: input {c.op.inputs[0]!r} must be an activation")
    w = _param(c.where, c.op, "weight", 4 if img else 3, (torch.int8,))
    groups = _int(c.where, "groups", c.a["groups"], 1, MAX_DIM)
    sF, pF = _conv_geometry(c, img)
    acc_max = c.acc_max()
    _conv_weight_shape(c, w, groups)
    acc = _conv_acc_bound(c, w)
    if acc > acc_max:
        raise ProgramError(f"{c.where}: tensor {_tn(c.op, 'weight')!r} (weight): the accumulator bound "
                           f"{acc} (the extreme of w . x + bias over the input's range) does not fit "
                           f"{c.a['acc_dtype']}")
    cout = int(w.shape[0])
    if not img:
        c.set_out(("bct", cout), acc)
        return
    F, kF = s[2], int(w.shape[3])
    F2 = None if F is None else (F + 2 * pF - kF) // sF + 1
    if F2 is not None and F2 < 1:
        raise ProgramError(f"{c.where}: {F} frequency bins are too few for the kernel")
    c.set_out(("img", cout, F2), acc)


def _check_requantize(c: _OpCheck) -> None:
    """requantize (to an activation's range) and rescale (to int64)"""
    s = c.ins[0]
    if s[0] not in ("bct", "img", "att"):
        raise ProgramError(f"{c.where}: input {c.op.inputs[0]!r} must be an accumulator or activation")
    C = s[1]
    if C is None:
        C = int(c.op.params["M"].numel()) if isinstance(c.op.params.get("M"), torch.Tensor) else 1
    b_out = _ms(c.where, c.op, C, c.in_bound(0))
    if c.op.kind == "requantize":
        bits = _int(c.where, "bits", c.a["bits"], 2, 16)
        signed = _bool(c.where, "signed", c.a["signed"])
        c.want(_storage(bits, signed))
        lo_, hi_ = _qrange(bits, signed)
        b_out = max(-lo_, hi_)
    else:
        c.want("int64")
        if b_out > INT64_HEADROOM:
            raise ProgramError(f"{c.where}: rescaled values reach {b_out}, beyond int64 headroom")
    c.set_out(s, b_out)


def _check_add(c: _OpCheck) -> None:
    ins = c.ins
    if ins[0][:2] != ins[1][:2] or ins[0][0] not in ("bct", "img", "att"):
        raise ProgramError(f"{c.where}: adds {c.op.inputs[0]!r} {ins[0]} and {c.op.inputs[1]!r} {ins[1]} "
                           f"of different shapes")
    c.want("int64")
    b_out = c.in_bound(0) + c.in_bound(1)
    if b_out > INT64_HEADROOM:
        raise ProgramError(f"{c.where}: the sum reaches {b_out}, beyond int64 headroom")
    c.set_out(ins[0], b_out)


def _check_clamp(c: _OpCheck) -> None:
    bits = _int(c.where, "bits", c.a["bits"], 2, 16)
    signed = _bool(c.where, "signed", c.a["signed"])
    c.want(_storage(bits, signed))
    lo_, hi_ = _qrange(bits, signed)
    c.set_out(c.ins[0], max(-lo_, hi_))


def _check_layernorm(c: _OpCheck) -> None:
    a, where = c.a, c.where
    C = c.act_of(0)[1]
    ch = _int(where, "channels", a["channels"], 1, MAX_DIM)
    if C is not None and ch != C:
        raise ProgramError(f"{where}: attribute 'channels' = {ch}, input {c.op.inputs[0]!r} has {C}")
    for k, lo_, hi_ in (("h", 0, MAX_SHIFT), ("eps_int", 0, 1 << 61), ("eps_shift", 0, MAX_SHIFT),
                        ("norm_bits", 0, 40), ("u_max", 0, 1 << 40), ("M", 0, 1 << 40),
                        ("shift", 0, MAX_SHIFT), ("out_bits", 2, 16)):
        _int(where, k, a[k], lo_, hi_)
    g = _param(where, c.op, "gamma_q", 1, (torch.int64, torch.int32), [(ch,)])
    b = _param(where, c.op, "beta_q", 1, (torch.int64, torch.int32), [(ch,)])
    accb = a["u_max"] * _absmax(g) + _absmax(b)
    if accb * a["M"] + (1 << a["shift"]) // 2 > I64:
        raise ProgramError(f"{where}: tensor {_tn(c.op, 'gamma_q')!r} (gamma_q): the LayerNorm "
                           f"product leaves int64")
    c.want(_storage(a["out_bits"], True))
    c.out_act(ch, (1 << (a["out_bits"] - 1)))


def _check_exp_ops(c: _OpCheck) -> None:
    """swish, glu and softmax: the integer exponential's constants (attribute exp), then the op's own"""
    a, where, kind = c.a, c.where, c.op.kind
    e = a["exp"]
    if not isinstance(e, dict):
        raise ProgramError(f"{where}: attribute 'exp' must be a mapping")
    for k, lo_, hi_ in (("in_shift", -MAX_SHIFT, MAX_SHIFT), ("q_ln2", 1, 1 << 40), ("q_b", -(1 << 40), 1 << 40),
                        ("q_c", -(1 << 50), 1 << 50), ("q_min", -(1 << 40), 0), ("out_max", 1, (1 << 31) - 1),
                        ("z_max", 0, MAX_SHIFT), ("recip", 1, 1 << 40), ("recip_shift", 0, MAX_SHIFT)):
        _int(where, f"exp.{k}", e.get(k), lo_, hi_)
    if kind == "softmax":
        if c.ins[0][0] != "att" or c.ins[1][0] != "len":
            raise ProgramError(f"{where}: takes [B, H, T, T] scores and lengths")
        ob = _int(where, "out_bits", a["out_bits"], 2, 16)
        _int(where, "recip_bits", a["recip_bits"], ob + 1, MAX_SHIFT)
        c.want(_storage(ob, False) if c.vout.role == "act" else c.vout.dtype)
        c.set_out(c.ins[0], 1 << ob)
        return
    C = c.act_of(0)[1]
    sb = _int(where, "sig_bits", a["sig_bits"], 1, 30)
    if kind == "glu":
        if C is not None and C % 2:
            raise ProgramError(f"{where}: GLU of an odd channel count {C}")
        C = None if C is None else C // 2
    c.want(c.vout.dtype)
    c.out_act(C, c.in_bound(0) << sb)


def _check_gelu(c: _OpCheck) -> None:
    C = c.act_of(0)[1]
    qb = _int(c.where, "q_b", c.a["q_b"], -(1 << 30), 1 << 30)
    qo = _int(c.where, "q_one", c.a["q_one"], -(1 << 60), 1 << 60)
    c.want(c.vout.dtype)
    b_in = c.in_bound(0)
    c.out_act(C, b_in * (abs(qo) * 2 + (abs(qb) + b_in) ** 2))


def _matmul_pv_bound(c: _OpCheck, h: int) -> tuple[tuple, int]:
    """(shape, accumulator bound) of probabilities [B, H, T, T] times values [B, C, T]"""
    if c.ins[0][0] != "att":
        raise ProgramError(f"{c.where}: input {c.op.inputs[0]!r} must be [B, H, T, T] probabilities")
    C = c.act_of(1)[1]
    if c.ins[0][1] is not None and c.ins[0][1] != h:
        raise ProgramError(f"{c.where}: {c.ins[0][1]} heads of probabilities, attribute heads = {h}")
    # sum_j p[i, j] <= 2^B + T (each probability rounds up by less than 1), T < 2^22 frames
    return ("bct", C), c.in_bound(1) * (c.in_bound(0) + T_MAX)


def _matmul_scores_bound(c: _OpCheck, h: int) -> tuple[tuple, int]:
    """(shape, accumulator bound) of the scores [B, H, T, T] of q . k (matmul_qk) or q . pos (matmul_pos)"""
    C = c.act_of(0)[1]
    if C is not None and C % h:
        raise ProgramError(f"{c.where}: {C} channels do not split into {h} heads")
    dk = None if C is None else C // h
    if c.op.kind == "matmul_qk":
        if c.act_of(1)[1] != C:
            raise ProgramError(f"{c.where}: q {c.op.inputs[0]!r} and k {c.op.inputs[1]!r} differ in channels")
        return ("att", h), (dk or 0) * c.in_bound(0) * c.in_bound(1)
    L = _int(c.where, "max_len", c.a["max_len"], 1, 1 << 20)
    pos = _param(c.where, c.op, "pos", 2, (torch.int8,), [(C, 2 * L - 1)] if C is not None else None)
    return ("att", h), (dk or 0) * c.in_bound(0) * _absmax(pos)


def _check_matmul(c: _OpCheck) -> None:
    """matmul_qk, matmul_pos (attention scores) and matmul_pv (probabilities times values)"""
    h = _int(c.where, "heads", c.a["heads"], 1, MAX_DIM)
    acc_max = c.acc_max()
    shape, acc = (_matmul_pv_bound if c.op.kind == "matmul_pv" else _matmul_scores_bound)(c, h)
    if acc > acc_max:
        raise ProgramError(f"{c.where}: the accumulator bound {acc} does not fit {c.a['acc_dtype']}")
    c.set_out(shape, acc)


def _check_to_image(c: _OpCheck) -> None:
    s = c.act_of(0)
    c.want(c.value(0).dtype)
    c.set_out(("img", 1, s[1]), c.in_bound(0))


def _check_flatten_freq(c: _OpCheck) -> None:
    s = c.ins[0]
    if s[0] != "img":
        raise ProgramError(f"{c.where}: input {c.op.inputs[0]!r} is not an image")
    c.want(c.value(0).dtype)
    c.set_out(("bct", None if s[2] is None else s[1] * s[2]), c.in_bound(0))


#: the load-time checks of each op kind: each checks the op's attributes, params and input shapes,
#: and records its output's shape and bound
KIND_CHECKS = {
    "mask_time": _check_mask_time, "frames": _check_frames, "conv1d": _check_conv, "conv2d": _check_conv,
    "requantize": _check_requantize, "rescale": _check_requantize, "add": _check_add, "clamp": _check_clamp,
    "layernorm": _check_layernorm, "swish": _check_exp_ops, "glu": _check_exp_ops, "softmax": _check_exp_ops,
    "gelu": _check_gelu, "matmul_qk": _check_matmul, "matmul_pv": _check_matmul, "matmul_pos": _check_matmul,
    "to_image": _check_to_image, "flatten_freq": _check_flatten_freq,
}


def _check_values(p: Program) -> None:
    """every Value record: a known dtype and role; an activation's bits, signedness and storage dtype"""
    for name, v in p.values.items():
        if not isinstance(v.dtype, str) or v.dtype not in DTYPES:
            raise ProgramError(f"value {name!r}: dtype {v.dtype!r} is not one of {sorted(DTYPES)}"[:300])
        if v.role not in ("act", "acc", "lengths"):
            raise ProgramError(f"value {name!r}: role {v.role!r} unknown"[:300])
        if v.role == "act":
            _int(f"value {name!r}", "bits", v.bits, 2, 16)
            _bool(f"value {name!r}", "signed", v.signed)
            if _storage(v.bits, v.signed) != v.dtype:
                raise ProgramError(f"value {name!r}: {'s' if v.signed else 'u'}{v.bits} activations are stored as "
                                   f"{_storage(v.bits, v.signed)}, not {v.dtype}")


def _check_inputs(p: Program) -> None:
    x_in, l_in = p.inputs
    for name in (x_in, l_in):
        if name not in p.values:
            raise ProgramError(f"program input {name!r} has no Value record")
    if p.values[x_in].role != "act" or p.values[l_in].role != "lengths":
        raise ProgramError(f"program inputs {x_in!r}, {l_in!r}: an activation and lengths expected")


def _input_features(p: Program, input_features: int | None) -> int | None:
    """the input's feature count: given, else the program's meta, else (older files) what the first
    conv1d that reads the input expects; None where unknown (a to_image op reads it first)"""
    if input_features is None:
        input_features = p.meta.get("input_features")
    if input_features is None:
        x_in = p.inputs[0]
        for op in p.ops:
            if op.kind == "conv1d" and op.inputs and op.inputs[0] == x_in and "weight" in op.params:
                w = op.params["weight"]
                g = op.attrs.get("groups", 1)
                input_features = int(w.shape[1]) * int(g) if w.dim() == 3 and isinstance(g, int) else None
                break
            if op.kind == "to_image":
                input_features = None
                break
    if input_features is not None:
        _int("program meta", "input_features", input_features, 1, MAX_DIM)
    return input_features


def _check_outputs(p: Program, shape: dict) -> None:
    lo_out, lens = p.outputs
    if shape.get(lo_out, ("",))[0] != "bct" or p.values[lo_out].dtype != "int64":
        raise ProgramError(f"program output {lo_out!r} must be int64 [B, classes, T]")
    if shape.get(lens, ("",))[0] != "len":
        raise ProgramError(f"program output {lens!r} must be lengths")


def check_program(p: Program, input_features: int | None = None) -> Program:
    """`p`, checked as the module doc says (ProgramError on the first failure), with `p.acc_bounds`
    set; `input_features`: the input's feature count where the program's meta does not say."""
    _check_values(p)
    _check_inputs(p)
    input_features = _input_features(p, input_features)
    x_in, l_in = p.inputs
    lo, hi = _qrange(p.values[x_in].bits, p.values[x_in].signed)
    # per value: shape (channel count, image width or None), bound |v| <= b
    shape: dict[str, tuple] = {x_in: ("bct", input_features), l_in: ("len",)}
    bound: dict[str, int] = {x_in: max(-lo, hi)}
    for i, op in enumerate(p.ops):
        c = _OpCheck(p, i, op, shape, bound)
        if op.kind not in KIND_CHECKS:   # validate() knows every kind in OPS; a new kind needs its checks here
            raise ProgramError(f"{c.where}: no load-time checks for op kind {op.kind!r} (known: {sorted(OPS)})")
        KIND_CHECKS[op.kind](c)
        if bound.get(c.out) is None:
            v = c.vout
            bound[c.out] = max(map(abs, _qrange(v.bits, v.signed))) if v.role == "act" else I64
    # what was proven, for reports (tools/accumulator_proof.py): the accumulator bound of each
    # accumulating op and the largest value its dtype holds
    p.acc_bounds = {op.name: (bound[op.outputs[0]], ACC_MAX[op.attrs["acc_dtype"]]) for op in p.ops
                    if op.kind in ("conv1d", "conv2d", "matmul_qk", "matmul_pv", "matmul_pos")}
    _check_outputs(p, shape)
    return p


def program_from_file(desc: dict, tensors: dict[str, torch.Tensor]) -> Program:
    """The program of a file, checked before anything runs: the structure (``Program.validate``), then
    every tensor's dtype and shape, every attribute and the accumulator bounds (``check_program``);
    a ProgramError names the op and the tensor."""
    return check_program(Program.from_state(desc, tensors))
