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

from .ops import _DTYPES, OPS, Program, ProgramError

I64 = (1 << 63) - 1
ACC_MAX = {"int32": (1 << 31) - 1, "int64": I64}
MAX_DIM = 1 << 16        # channels, kernel taps, paddings, heads, positions
MAX_SHIFT = 62
T_MAX = 1 << 22          # frames (the converter's matmul_pv bound assumes fewer)


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


def check_program(p: Program, input_features: int | None = None) -> Program:
    # value records
    for name, v in p.values.items():
        if not isinstance(v.dtype, str) or v.dtype not in _DTYPES:
            raise ProgramError(f"value {name!r}: dtype {v.dtype!r} is not one of {sorted(_DTYPES)}"[:300])
        if v.role not in ("act", "acc", "lengths"):
            raise ProgramError(f"value {name!r}: role {v.role!r} unknown"[:300])
        if v.role == "act":
            _int(f"value {name!r}", "bits", v.bits, 2, 16)
            _bool(f"value {name!r}", "signed", v.signed)
            if _storage(v.bits, v.signed) != v.dtype:
                raise ProgramError(f"value {name!r}: {'s' if v.signed else 'u'}{v.bits} activations are stored as "
                                   f"{_storage(v.bits, v.signed)}, not {v.dtype}")
    x_in, l_in = p.inputs
    for name in (x_in, l_in):
        if name not in p.values:
            raise ProgramError(f"program input {name!r} has no Value record")
    vin = p.values[x_in]
    if vin.role != "act" or p.values[l_in].role != "lengths":
        raise ProgramError(f"program inputs {x_in!r}, {l_in!r}: an activation and lengths expected")
    if input_features is None:
        input_features = p.meta.get("input_features")
    if input_features is None:   # older files: the first op that reads the input says
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
    lo, hi = _qrange(vin.bits, vin.signed)
    # per value: shape (channel count, image width or None), bound |v| <= b
    shape: dict[str, tuple] = {x_in: ("bct", input_features), l_in: ("len",)}
    bound: dict[str, int] = {x_in: max(-lo, hi)}
    ints_max = 1 << 62
    for i, op in enumerate(p.ops):
        where = f"op {i} ({op.kind} {op.name!r})"
        a = op.attrs
        if not isinstance(a, dict):
            raise ProgramError(f"{where}: attributes must be a mapping")
        ins = [shape[n] for n in op.inputs]
        out = op.outputs[0]
        vout = p.values[out]
        kind = op.kind

        def want(dt: str):
            if vout.dtype != dt:
                raise ProgramError(f"{where}: output {out!r} is declared {vout.dtype}, the op makes {dt}")

        def act_of(k: int) -> tuple:
            s = ins[k]
            if s[0] != "bct":
                raise ProgramError(f"{where}: input {op.inputs[k]!r} must be a [B, C, T] tensor, is {s[0]}")
            return s

        def out_act(C, b_out):
            shape[out] = ("bct", C)
            if vout.role == "act":
                lo_, hi_ = _qrange(vout.bits, vout.signed)
                b_out = min(b_out, max(-lo_, hi_))
            bound[out] = b_out

        if kind == "mask_time":
            if ins[1][0] != "len" or ins[0][0] not in ("bct", "img"):
                raise ProgramError(f"{where}: takes an activation and lengths")
            want(p.values[op.inputs[0]].dtype)
            shape[out], bound[out] = ins[0], bound[op.inputs[0]]
        elif kind == "frames":
            if ins[0][0] != "len":
                raise ProgramError(f"{where}: takes lengths")
            for k, lo_ in (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
                _int(where, k, a[k], lo_, MAX_DIM)
            want("int64")
            shape[out] = ("len",)
        elif kind in ("conv1d", "conv2d"):
            img = kind == "conv2d"
            s = ins[0]
            if s[0] != ("img" if img else "bct"):
                raise ProgramError(f"{where}: input {op.inputs[0]!r} is not a {'[B, C, T, F] image' if img else '[B, C, T] tensor'}")
            if p.values[op.inputs[0]].role != "act":
                raise ProgramError(f"{where}: input {op.inputs[0]!r} must be an activation")
            w = _param(where, op, "weight", 4 if img else 3, (torch.int8,))
            groups = _int(where, "groups", a["groups"], 1, MAX_DIM)
            if img:
                st_ = a["stride"]
                pd_ = a["padding"]
                if not (isinstance(st_, (list, tuple)) and len(st_) == 2 and isinstance(pd_, (list, tuple)) and len(pd_) == 2):
                    raise ProgramError(f"{where}: stride and padding must be [time, freq] pairs")
                sT, sF = (_int(where, "stride", v, 1, MAX_DIM) for v in st_)
                pT, pF = (_int(where, "padding", v, 0, MAX_DIM) for v in pd_)
            else:
                _int(where, "stride", a["stride"], 1, MAX_DIM)
                _int(where, "padding", a["padding"], 0, MAX_DIM)
                _int(where, "dilation", a["dilation"], 1, MAX_DIM)
            if a["acc_dtype"] not in ACC_MAX:
                raise ProgramError(f"{where}: attribute 'acc_dtype' = {a['acc_dtype']!r}, expected int32 or int64"[:300])
            want(a["acc_dtype"])
            cout, cin_g = int(w.shape[0]), int(w.shape[1])
            cin = s[1]
            if cout < 1 or cin_g < 1 or any(int(k) < 1 for k in w.shape[2:]) or cout % groups:
                raise ProgramError(f"{where}: tensor {_tn(op, 'weight')!r} (weight) has shape "
                                   f"{tuple(w.shape)}, not [Cout, Cin/{groups}, K...] with Cout a multiple of groups")
            if max(w.shape) > MAX_DIM:
                raise ProgramError(f"{where}: tensor {_tn(op, 'weight')!r} (weight) shape {tuple(w.shape)} "
                                   f"exceeds {MAX_DIM}")
            if cin is not None and cin_g * groups != cin:
                raise ProgramError(f"{where}: tensor {_tn(op, 'weight')!r} (weight) shape {tuple(w.shape)} "
                                   f"reads {cin_g * groups} channels ({groups} groups); input {op.inputs[0]!r} has {cin}")
            bias = [0] * cout
            if "bias" in op.params and op.params["bias"] is not None:
                bias = [int(v) for v in _param(where, op, "bias", 1, (torch.int32, torch.int64), [(cout,)]).tolist()]
            # the exact extreme of each output channel over every input in the declared box
            # [lo, hi]^n: b + hi sum(w > 0) + lo sum(w < 0), and the other way round
            vx = p.values[op.inputs[0]]
            xlo, xhi = _qrange(vx.bits, vx.signed)
            w2 = w.to(torch.int64).reshape(cout, -1)
            wpos, wneg = w2.clamp(min=0).sum(1).tolist(), w2.clamp(max=0).sum(1).tolist()
            acc = max(max(abs(b + xhi * pw + xlo * nw), abs(b + xlo * pw + xhi * nw))
                      for b, pw, nw in zip(bias, wpos, wneg))
            if acc > ACC_MAX[a["acc_dtype"]]:
                raise ProgramError(f"{where}: tensor {_tn(op, 'weight')!r} (weight): the accumulator bound "
                                   f"{acc} (the extreme of w . x + bias over the input's range) does not fit "
                                   f"{a['acc_dtype']}")
            if img:
                F = s[2]
                kT, kF = int(w.shape[2]), int(w.shape[3])
                F2 = None if F is None else (F + 2 * pF - kF) // sF + 1
                if F2 is not None and F2 < 1:
                    raise ProgramError(f"{where}: {F} frequency bins are too few for the kernel")
                shape[out] = ("img", cout, F2)
            else:
                shape[out] = ("bct", cout)
            bound[out] = acc
        elif kind in ("requantize", "rescale"):
            s = ins[0]
            if s[0] not in ("bct", "img", "att"):
                raise ProgramError(f"{where}: input {op.inputs[0]!r} must be an accumulator or activation")
            C = s[1]
            if C is None:
                C = int(op.params["M"].numel()) if isinstance(op.params.get("M"), torch.Tensor) else 1
            b_out = _ms(where, op, C, bound[op.inputs[0]])
            if kind == "requantize":
                bits = _int(where, "bits", a["bits"], 2, 16)
                signed = _bool(where, "signed", a["signed"])
                want(_storage(bits, signed))
                lo_, hi_ = _qrange(bits, signed)
                b_out = max(-lo_, hi_)
            else:
                want("int64")
                if b_out > ints_max:
                    raise ProgramError(f"{where}: rescaled values reach {b_out}, beyond int64 headroom")
            shape[out], bound[out] = s, b_out
        elif kind == "add":
            if ins[0][:2] != ins[1][:2] or ins[0][0] not in ("bct", "img", "att"):
                raise ProgramError(f"{where}: adds {op.inputs[0]!r} {ins[0]} and {op.inputs[1]!r} {ins[1]} of different shapes")
            want("int64")
            b_out = bound[op.inputs[0]] + bound[op.inputs[1]]
            if b_out > ints_max:
                raise ProgramError(f"{where}: the sum reaches {b_out}, beyond int64 headroom")
            shape[out], bound[out] = ins[0], b_out
        elif kind == "clamp":
            bits = _int(where, "bits", a["bits"], 2, 16)
            signed = _bool(where, "signed", a["signed"])
            want(_storage(bits, signed))
            lo_, hi_ = _qrange(bits, signed)
            shape[out], bound[out] = ins[0], max(-lo_, hi_)
        elif kind == "layernorm":
            C = act_of(0)[1]
            ch = _int(where, "channels", a["channels"], 1, MAX_DIM)
            if C is not None and ch != C:
                raise ProgramError(f"{where}: attribute 'channels' = {ch}, input {op.inputs[0]!r} has {C}")
            for k, lo_, hi_ in (("h", 0, MAX_SHIFT), ("eps_int", 0, 1 << 61), ("eps_shift", 0, MAX_SHIFT),
                                ("norm_bits", 0, 40), ("u_max", 0, 1 << 40), ("M", 0, 1 << 40),
                                ("shift", 0, MAX_SHIFT), ("out_bits", 2, 16)):
                _int(where, k, a[k], lo_, hi_)
            g = _param(where, op, "gamma_q", 1, (torch.int64, torch.int32), [(ch,)])
            b = _param(where, op, "beta_q", 1, (torch.int64, torch.int32), [(ch,)])
            accb = a["u_max"] * _absmax(g) + _absmax(b)
            if accb * a["M"] + (1 << a["shift"]) // 2 > I64:
                raise ProgramError(f"{where}: tensor {_tn(op, 'gamma_q')!r} (gamma_q): the LayerNorm "
                                   f"product leaves int64")
            want(_storage(a["out_bits"], True))
            out_act(ch, (1 << (a["out_bits"] - 1)))
        elif kind in ("swish", "glu", "softmax"):
            e = a["exp"]
            if not isinstance(e, dict):
                raise ProgramError(f"{where}: attribute 'exp' must be a mapping")
            for k, lo_, hi_ in (("in_shift", -MAX_SHIFT, MAX_SHIFT), ("q_ln2", 1, 1 << 40), ("q_b", -(1 << 40), 1 << 40),
                                ("q_c", -(1 << 50), 1 << 50), ("q_min", -(1 << 40), 0), ("out_max", 1, (1 << 31) - 1),
                                ("z_max", 0, MAX_SHIFT), ("recip", 1, 1 << 40), ("recip_shift", 0, MAX_SHIFT)):
                _int(where, f"exp.{k}", e.get(k), lo_, hi_)
            if kind == "softmax":
                if ins[0][0] != "att" or ins[1][0] != "len":
                    raise ProgramError(f"{where}: takes [B, H, T, T] scores and lengths")
                ob = _int(where, "out_bits", a["out_bits"], 2, 16)
                _int(where, "recip_bits", a["recip_bits"], ob + 1, MAX_SHIFT)
                want(_storage(ob, False) if vout.role == "act" else vout.dtype)
                shape[out], bound[out] = ins[0], 1 << ob
            else:
                C = act_of(0)[1]
                sb = _int(where, "sig_bits", a["sig_bits"], 1, 30)
                if kind == "glu":
                    if C is not None and C % 2:
                        raise ProgramError(f"{where}: GLU of an odd channel count {C}")
                    C = None if C is None else C // 2
                want(vout.dtype)
                out_act(C, bound[op.inputs[0]] << sb)
        elif kind == "gelu":
            C = act_of(0)[1]
            qb = _int(where, "q_b", a["q_b"], -(1 << 30), 1 << 30)
            qo = _int(where, "q_one", a["q_one"], -(1 << 60), 1 << 60)
            want(vout.dtype)
            b_in = bound[op.inputs[0]]
            out_act(C, b_in * (abs(qo) * 2 + (abs(qb) + b_in) ** 2))
        elif kind in ("matmul_qk", "matmul_pv", "matmul_pos"):
            h = _int(where, "heads", a["heads"], 1, MAX_DIM)
            if a["acc_dtype"] not in ACC_MAX:
                raise ProgramError(f"{where}: attribute 'acc_dtype' = {a['acc_dtype']!r}, expected int32 or int64"[:300])
            want(a["acc_dtype"])
            if kind == "matmul_pv":
                if ins[0][0] != "att":
                    raise ProgramError(f"{where}: input {op.inputs[0]!r} must be [B, H, T, T] probabilities")
                C = act_of(1)[1]
                if ins[0][1] is not None and ins[0][1] != h:
                    raise ProgramError(f"{where}: {ins[0][1]} heads of probabilities, attribute heads = {h}")
                # sum_j p[i, j] <= 2^B + T (each probability rounds up by less than 1), T < 2^22 frames
                acc = bound[op.inputs[1]] * (bound[op.inputs[0]] + T_MAX)
                if acc > ACC_MAX[a["acc_dtype"]]:
                    raise ProgramError(f"{where}: the accumulator bound {acc} does not fit {a['acc_dtype']}")
                shape[out], bound[out] = ("bct", C), acc
            else:
                C = act_of(0)[1]
                if C is not None and C % h:
                    raise ProgramError(f"{where}: {C} channels do not split into {h} heads")
                dk = None if C is None else C // h
                if kind == "matmul_qk":
                    if act_of(1)[1] != C:
                        raise ProgramError(f"{where}: q {op.inputs[0]!r} and k {op.inputs[1]!r} differ in channels")
                    acc = (dk or 0) * bound[op.inputs[0]] * bound[op.inputs[1]]
                else:
                    L = _int(where, "max_len", a["max_len"], 1, 1 << 20)
                    pos = _param(where, op, "pos", 2, (torch.int8,), [(C, 2 * L - 1)] if C is not None else None)
                    acc = (dk or 0) * bound[op.inputs[0]] * _absmax(pos)
                if acc > ACC_MAX[a["acc_dtype"]]:
                    raise ProgramError(f"{where}: the accumulator bound {acc} does not fit {a['acc_dtype']}")
                shape[out], bound[out] = ("att", h), acc
        elif kind == "to_image":
            s = act_of(0)
            want(p.values[op.inputs[0]].dtype)
            shape[out], bound[out] = ("img", 1, s[1]), bound[op.inputs[0]]
        elif kind == "flatten_freq":
            s = ins[0]
            if s[0] != "img":
                raise ProgramError(f"{where}: input {op.inputs[0]!r} is not an image")
            want(p.values[op.inputs[0]].dtype)
            shape[out] = ("bct", None if s[2] is None else s[1] * s[2])
            bound[out] = bound[op.inputs[0]]
        else:   # validate() knows every kind in OPS; a new kind needs its checks here
            raise ProgramError(f"{where}: no load-time checks for op kind {kind!r} (known: {sorted(OPS)})")
        if bound.get(out) is None:
            v = p.values[out]
            bound[out] = max(map(abs, _qrange(v.bits, v.signed))) if v.role == "act" else I64
    # what was proven, for reports (tools/accumulator_proof.py): the accumulator bound of each
    # accumulating op and the largest value its dtype holds
    p.acc_bounds = {op.name: (bound[op.outputs[0]], ACC_MAX[op.attrs["acc_dtype"]]) for op in p.ops
                    if op.kind in ("conv1d", "conv2d", "matmul_qk", "matmul_pv", "matmul_pos")}
    lo_out, lens = p.outputs
    if shape.get(lo_out, ("",))[0] != "bct" or p.values[lo_out].dtype != "int64":
        raise ProgramError(f"program output {lo_out!r} must be int64 [B, classes, T]")
    if shape.get(lens, ("",))[0] != "len":
        raise ProgramError(f"program output {lens!r} must be lengths")
    return p


def program_from_file(desc: dict, tensors: dict[str, torch.Tensor]) -> Program:
    """The program of a file, checked before anything runs: the structure (``Program.validate``), then
    every tensor's dtype and shape, every attribute and the accumulator bounds (``check_program``);
    a ProgramError names the op and the tensor."""
    return check_program(Program.from_state(desc, tensors))
