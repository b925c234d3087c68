"""Learned weight rounding (AdaRound, Nagel et al. 2020), zero-shot: the reconstruction data are
the synthetic calibration batches.

Every weight of a conv (BatchNorm folded, per-output-channel scale s fixed by the converter's
min/max rule) may round down or up. AdaRound learns that choice: the soft weight is

    w~ = s * clamp(floor(w / s) + h(V), lo, hi),   h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)

with one variable V per weight (initialised so that w~ = w), minimising

    || conv(x_q; w~) - conv(x; w) ||^2 / E_0  +  lambda * mean (1 - |2 h(V) - 1|^beta)

(E_0: the same error with round-to-nearest weights, so that one lambda suits every layer) over the
valid output frames, where x is the conv's input in the float model and x_q its input
in the *quantized* model: every conv before it already hard-rounded and every activation
fake-quantized at exactly the integer program's quantization points (depthwise outputs signed,
ReLU outputs and block outputs unsigned, the residual sum before its clamp). So each conv also
corrects the error that reaches it (AdaRound's asymmetric reconstruction; BRECQ's sequential
order).

Joint bias (``centered``, the default): the bias gets the bias correction in closed form,
shift = mu_f (w - w~) (mu_f: the float input's mean im2col column), and the rounding is learned on
the error the conv has *with* that shift: the Gram matrices of the columns centered on mu_f.
Rounding and bias correction then compose instead of fighting: learning against raw second
moments spends the rounding on the mean error, which bias correction afterwards removes a second
time (measured: AdaRound + bias correction was worse than either alone). beta is annealed from 20 to 2 after a warm-up so that h(V) is driven to 0 or 1; then the
rounding is made hard (V >= 0: up). The result is an ordinary integer weight tensor on the same
grid as round-to-nearest: the integer program does not change. With per-group multipliers
(``quant.groups``) the step is per weight, s[o] k[o, g], and the codes are the groups'.

Cheap by design (2 shared CPU cores): the reconstruction error of one conv is a quadratic form
in its weights, so the calibration frames enter only through two Gram matrices of the im2col
columns (H_qq = X_q^T X_q, H_qf = X_q^T X, float64, once per conv) and an iteration costs
O(Cout n^2) (n = Cin K; depthwise: C K^2) whatever the number of frames. Each block's codes are
cached (atomically) under `cache_dir / key / block_XX.pt`, key = hash of everything the codes
depend on, so an interrupted run resumes at the first missing block.

Optional block stage (``block_iterations``, ``refine_block``, BRECQ): each block's convs then
relearn their rounding together against the float block's output. It fits the synthetic batch
better and measured worse on speech (results/beyond_adaround.csv), so it is off by default.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import fake_quantize, qrange, scale_from_range

ZETA, GAMMA = 1.1, -0.1  # rectified sigmoid stretch (AdaRound)
CACHE_FORMAT = 3          # 2: the cache holds bias shifts too; 3: and weight scales
#: clipping ratios the scale search tries (fractions of the channel's max |w|)
SCALE_RATIOS = tuple(round(0.40 + 0.025 * i, 3) for i in range(25))
MAX_COLUMNS = 4096       # dense convs with more im2col columns keep round-to-nearest (Gram too large)


@dataclass
class AdaRoundConfig:
    iterations: int = 100        # Adam steps per conv
    lr: float = 2e-2             # Adam on V
    centered: bool = True        # joint bias: learn on covariances, then the closed-form bias shift
    asymmetric: bool = True      # reconstruct the float output from the *quantized* input (False: from the float input)
    reg_weight: float = 1.0      # lambda, on the mean regulariser vs the error relative to nearest rounding
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2          # fraction of iterations without the rounding regulariser
    scale_search: bool = False   # per output channel, the clipping (of SCALE_RATIOS) with the least output error
    relu_aware: bool = False     # convs followed by BN + ReLU: the error after the ReLU (frames, not Gram matrices)
    block_iterations: int = 0    # then per block, Adam steps on all its convs' rounding at once against
                                 # the block's output (``refine_block``; 0: off)
    block_lr: float = 3e-2       # Adam on V in the block stage (from |V| = V_START: 1e-2 flips too few weights)
    block_reg_weight: float = 30.0   # lambda of the block stage (at 1 the soft weights stay between the grid
                                     # points: soft error 10x lower, hard error unchanged on QuartzNet-15x5)


# --------------------------------------------------------------------------- soft rounding

def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


class SoftRounding(nn.Module):
    """Learned rounding of one weight matrix w [Cout, n] on the grid scale[o] * q, q in qrange(bits)
    (scale [Cout]; or scale[o, i] * q with per-group multipliers, scale [Cout, n])."""

    def __init__(self, w: torch.Tensor, scale: torch.Tensor, bits: int):
        super().__init__()
        s = scale.to(torch.float64).reshape(w.shape[0], -1)
        x = w.to(torch.float64) / s
        floor = torch.floor(x)
        rest = (x - floor).clamp(0.0, 1.0)
        # h(V) = rest at the start: the soft weight equals the float weight (inside the range)
        self.V = nn.Parameter((-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).float())
        self.register_buffer("floor", floor.float())
        self.register_buffer("scale", s.float())
        self.register_buffer("floor64", floor)
        self.lo, self.hi = qrange(bits, signed=True)

    def soft_weight(self) -> torch.Tensor:
        return torch.clamp(self.floor + rectified_sigmoid(self.V), self.lo, self.hi) * self.scale

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1.0 - (2.0 * rectified_sigmoid(self.V) - 1.0).abs().pow(beta)).sum()

    def codes(self) -> torch.Tensor:
        """Hard rounding: up where h(V) >= 1/2 (V >= 0)."""
        return torch.clamp(self.floor64 + (self.V.detach() >= 0).double(), self.lo, self.hi)


def beta_at(it: int, cfg: AdaRoundConfig) -> float | None:
    """The regulariser's exponent at iteration `it` (None during the warm-up): cosine 20 -> 2."""
    warm = int(cfg.warmup * cfg.iterations)
    if it < warm:
        return None
    frac = (it - warm) / max(cfg.iterations - warm - 1, 1)
    return cfg.beta_end + 0.5 * (cfg.beta_start - cfg.beta_end) * (1 + math.cos(math.pi * frac))


def _nearest_weight(w: torch.Tensor, soft: SoftRounding) -> torch.Tensor:
    """Round-to-nearest of w [Cout, n] on soft's grid (float32), the baseline error's weights."""
    return torch.clamp(torch.round(w.double() / soft.scale.double()), soft.lo, soft.hi).float() * soft.scale


def _anneal(soft: SoftRounding, error, e0: float, cfg: AdaRoundConfig) -> torch.Tensor:
    """Adam on V: error(soft weight) / e0 (round-to-nearest's error: scale-free, so that one
    reg_weight suits every layer whatever its output's magnitude) plus the regulariser as a mean,
    annealed by ``beta_at``; then the hard codes."""
    opt = torch.optim.Adam([soft.V], lr=cfg.lr)
    e0 = max(float(e0), 1e-30)
    for it in range(cfg.iterations):
        rec = error(soft.soft_weight()) / e0
        beta = beta_at(it, cfg)
        loss = rec if beta is None else rec + cfg.reg_weight * soft.regulariser(beta) / soft.V.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return soft.codes()


def learn_rounding(w: torch.Tensor, scale: torch.Tensor, bits: int, Hqq: torch.Tensor, Hqf: torch.Tensor,
                   cfg: AdaRoundConfig, Hff: torch.Tensor | None = None) -> torch.Tensor:
    """Integer codes (float64) of w [Cout, n] minimising (w~ Hqq w~^T - 2 w~ Hqf w^T) per row (+ the
    regulariser). Hqq, Hqf: [n, n] (one input space for all rows) or [Cout, n, n] (depthwise:
    a space per row), normalised by the number of frames."""
    soft = SoftRounding(w, scale, bits)
    per_row = Hqq.dim() == 3
    Hqq = Hqq.float()
    # the cross term's target: P = w Hqf^T (row o: Hqf_o w_o for per-row spaces)
    P = (torch.einsum("onm,om->on", Hqf, w.double()) if per_row else w.double() @ Hqf.T).float()
    Hff = Hqq.double() if Hff is None else Hff.double()
    const = float((w.double() * (torch.einsum("onm,om->on", Hff, w.double()) if per_row else w.double() @ Hff)).sum())

    def rec_of(wq):   # || X_q w~^T - X w^T ||^2 / N up to the constant w Hff w^T
        wH = torch.einsum("on,onm->om", wq, Hqq) if per_row else wq @ Hqq
        return (wq * (wH - 2.0 * P)).sum()

    with torch.no_grad():
        e0 = float(rec_of(_nearest_weight(w, soft))) + const
    return _anneal(soft, lambda wq: rec_of(wq) + const, e0, cfg)


def learn_rounding_relu(w: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, bits: int,
                        cols: torch.Tensor, mean: torch.Tensor, cfg: AdaRoundConfig) -> torch.Tensor:
    """Integer codes (float64) of a conv whose output goes through a ReLU: minimise, over the
    float input's columns X [N, n], || relu(X w~^T + b + m (w - w~)) - relu(X w^T + b) ||^2
    (the centered bias shift m (w - w~), m the mean column, is part of the model) relative to
    round-to-nearest's, plus the same regulariser as ``learn_rounding``. Errors on outputs that
    the ReLU zeroes either way cost nothing, so the rounding is spent where the next layer sees it."""
    soft = SoftRounding(w, scale, bits)
    X = cols.float()
    m = mean.float()
    wf = w.float()
    b = torch.zeros(w.shape[0]) if bias is None else bias.float()
    target = torch.relu(X @ wf.T + b)

    def err(wq):
        return (torch.relu(X @ wq.T + b + (wf - wq) @ m) - target).pow(2).sum()

    with torch.no_grad():
        e0 = err(_nearest_weight(w, soft))
    return _anneal(soft, err, e0, cfg)


def reconstruction_error(w_deq: torch.Tensor, w: torch.Tensor, Hqq: torch.Tensor, Hqf: torch.Tensor,
                         Hff: torch.Tensor) -> float:
    """|| X_q w_deq^T - X w^T ||^2 / N from the Gram matrices ([n, n], or [Cout, n, n] per row):
    for tests and logs (with covariances: the error after the best bias shift)."""
    w_deq, w = w_deq.double(), w.double()
    if Hqq.dim() == 3:
        quad = lambda a, H, b: torch.einsum("on,onm,om->", a, H.double(), b)   # noqa: E731
    else:
        quad = lambda a, H, b: (a @ H.double() * b).sum()   # noqa: E731
    return float(quad(w_deq, Hqq, w_deq) - 2 * quad(w_deq, Hqf, w) + quad(w, Hff, w))


def row_errors(w_deq: torch.Tensor, w: torch.Tensor, Hqq: torch.Tensor, Hqf: torch.Tensor,
               Hff: torch.Tensor) -> torch.Tensor:
    """``reconstruction_error`` per output channel: [Cout] float64."""
    w_deq, w = w_deq.double(), w.double()
    if Hqq.dim() == 3:
        quad = lambda a, H, b: torch.einsum("on,onm,om->o", a, H.double(), b)   # noqa: E731
    else:
        quad = lambda a, H, b: (a @ H.double() * b).sum(-1)   # noqa: E731
    return quad(w_deq, Hqq, w_deq) - 2 * quad(w_deq, Hqf, w) + quad(w, Hff, w)


def search_scale(w: torch.Tensor, scale: torch.Tensor, bits: int, H: dict) -> torch.Tensor:
    """Per output channel, the weight scale among ``scale * r`` (r in SCALE_RATIOS) whose
    round-to-nearest weights give the conv the least output error under the Gram matrices H
    (output-aware clipping: weight-space MSE clipping, which ignores what the input feeds each
    weight, measured far worse at 4 bits, results/beyond.csv). w: [Cout, n]; scale: [Cout]."""
    lo, hi = qrange(bits, signed=True)
    s0 = scale.double().reshape(-1)
    best, best_err = s0.clone(), torch.full_like(s0, math.inf)
    for r in SCALE_RATIOS:
        s = s0 * r
        wq = torch.clamp(torch.round(w.double() / s[:, None]), lo, hi) * s[:, None]
        err = row_errors(wq, w, H["qq"], H["qf"], H["ff"])
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def bias_shift(w_deq: torch.Tensor, w: torch.Tensor, mean_q: torch.Tensor, mean_f: torch.Tensor) -> torch.Tensor:
    """Per output channel, the bias shift that zeroes the mean output error of a conv with
    weights w_deq on the quantized input vs w on the float input: mu_f w - mu_q w_deq
    (mean_q / mean_f: the mean im2col column, [n] or [Cout, n] per row)."""
    return (mean_f.double() * w.double()).sum(-1) - (mean_q.double() * w_deq.double()).sum(-1)


# --------------------------------------------------------------------------- Gram matrices

def im2col(x: torch.Tensor, lens: torch.Tensor, conv: nn.Conv1d, out_lens: torch.Tensor) -> torch.Tensor:
    """Valid output frames' input columns: [C, N, K] (padding and frames past a length zeroed)."""
    from ..models.convasr import frame_mask

    x = x * frame_mask(lens, x.shape[-1])[:, None, :].to(x.dtype)
    K = conv.kernel_size[0]
    xp = F.pad(x, (conv.padding[0], conv.padding[0])).double()
    span = conv.dilation[0] * (K - 1) + 1
    u = xp.unfold(2, span, conv.stride[0])[:, :, :, :: conv.dilation[0]]        # [B, C, T_out, K]
    keep = frame_mask(out_lens, u.shape[2]).reshape(-1)
    return u.permute(1, 0, 2, 3).reshape(u.shape[1], -1, K)[:, keep]


class Grams:
    """Accumulates H_qq, H_qf (and H_ff) of one conv over batches (``add``: from its inputs;
    ``add_columns``: from input columns made elsewhere, e.g. a Linear's frames or a Conv2d's patches)."""

    def __init__(self, conv: nn.Module, depthwise: bool | None = None):
        self.conv, self.n = conv, 0
        self.depthwise = is_depthwise(conv) if depthwise is None else depthwise
        self.H: dict = {}

    def add(self, xq, xf, lens, out_lens):
        cq = im2col(xq, lens, self.conv, out_lens)
        if self.depthwise:    # [C, N, K]: per channel K x K
            self.add_columns(cq, cq if xf is xq else im2col(xf, lens, self.conv, out_lens))
            return
        dense = lambda c: c.permute(1, 0, 2).reshape(c.shape[1], -1)   # noqa: E731 [Cin, N, K] -> [N, Cin*K]
        self.add_columns(dense(cq), None if xf is xq else dense(im2col(xf, lens, self.conv, out_lens)))

    def add_columns(self, cq: torch.Tensor, cf: torch.Tensor | None = None) -> None:
        """Columns of the quantized (cq) and float (cf; None: the same, a symmetric objective) inputs:
        [N, n] with column index c*K + k, the weight's layout (depthwise: [C, N, K])."""
        cq = cq.double()
        cf = cq if cf is None else cf.double()
        if self.depthwise:    # per channel K x K
            qq = torch.einsum("cnk,cnl->ckl", cq, cq)
            qf = qq if cf is cq else torch.einsum("cnk,cnl->ckl", cq, cf)
            ff = qq if cf is cq else torch.einsum("cnk,cnl->ckl", cf, cf)
            terms = {"qq": qq, "qf": qf, "ff": ff, "q": cq.sum(dim=1), "f": cf.sum(dim=1)}
            n = cq.shape[1]
        else:
            qq = cq.T @ cq
            qf = qq if cf is cq else cq.T @ cf
            ff = qq if cf is cq else cf.T @ cf
            terms = {"qq": qq, "qf": qf, "ff": ff, "q": cq.sum(dim=0), "f": cf.sum(dim=0)}
            n = cq.shape[0]
        for k, v in terms.items():
            self.H[k] = self.H[k] + v if k in self.H else v
        self.n += n

    def normalised(self) -> dict:
        """Second moments "qq", "qf", "ff" and mean columns "q", "f" (per frame)."""
        return {k: v / max(self.n, 1) for k, v in self.H.items()}

    def centered(self) -> dict:
        """Second moments of the columns centered on the *float* input's mean m = mu_f:
        E[(x_q - m)(x_q - m)^T], E[(x_q - m)(x - m)^T], E[(x - m)(x - m)^T]. With the bias shift
        m (w - w~) (bias correction on the float means, ``bias_shift``) the conv's output error is
        (x_q - m) w~ - (x - m) w: the quadratic form in these is the error the model will have.
        (Centering on mu_q too, i.e. also correcting the mean error the quantized layers before
        pass on, fits the synthetic batch better but measured far worse on speech.)"""
        H = self.normalised()
        outer = (lambda a, b: torch.einsum("ck,cl->ckl", a, b)) if self.depthwise else torch.outer
        m, mq = H["f"], H["q"]
        return {"qq": H["qq"] - outer(mq, m) - outer(m, mq) + outer(m, m), "qf": H["qf"] - outer(mq, m),
                "ff": H["ff"] - outer(m, m), "q": m, "f": m}


def is_depthwise(conv: nn.Module) -> bool:
    groups = getattr(conv, "groups", 1)
    return groups > 1 and groups == conv.in_channels == conv.out_channels


def learnable(conv: nn.Module) -> bool:
    """Whether a layer's rounding can be learned: depthwise, or dense with at most MAX_COLUMNS
    input columns (a Linear is a dense conv with K = 1)."""
    if isinstance(conv, nn.Linear):
        return conv.in_features <= MAX_COLUMNS
    n = conv.in_channels * math.prod(conv.kernel_size)
    return is_depthwise(conv) or (conv.groups == 1 and n <= MAX_COLUMNS)


# --------------------------------------------------------------------------- the quantized walk

def _fq_ste(x: torch.Tensor, scale: float, bits: int, signed: bool) -> torch.Tensor:
    """``fake_quantize`` with the straight-through gradient inside the range (zero where it clamps)."""
    lo, hi = qrange(bits, signed)
    v = torch.clamp(x / scale, lo, hi)
    return (v + (torch.round(v) - v).detach()) * scale


def grid_step(w: torch.Tensor, bits: int, weight_method: str, weight_group: int = 0) -> torch.Tensor:
    """The step of each row of w's grid (``weight.weight_grid``): s_w [Cout], or with per-group
    multipliers each weight's own step k s_w [Cout, n] (the codes are then the group's, quant.groups)."""
    from .weights import weight_grid

    s_w, k = weight_grid(w, bits, weight_method, weight_group)
    return s_w if k is None else k.reshape(k.shape[0], -1).double() * s_w.reshape(-1, 1)


@dataclass
class FoldedConv:
    """A conv with BatchNorm folded, its weight scale and width (what the converter will use)."""

    name: str
    module: nn.Module            # the MaskedConv1d (encoder) or the decoder's nn.Conv1d
    conv: nn.Conv1d
    weight: torch.Tensor         # float64 folded
    bias: torch.Tensor | None    # float64 folded
    scale: torch.Tensor          # float64 [Cout]; [Cout, n] with per-group multipliers (k s, quant.groups)
    bits: int

    def out_lengths(self, lens):
        return lens if isinstance(self.module, nn.Conv1d) else self.module.output_lengths(lens)

    def run(self, x, lens, w, shift=None):
        """The conv with weight w and the folded bias (+ shift, the learned bias correction)."""
        from ..models.convasr import frame_mask

        c = self.conv
        x = x * frame_mask(lens, x.shape[-1])[:, None, :].to(x.dtype)
        b = self.bias if shift is None else shift if self.bias is None else self.bias + shift
        y = F.conv1d(x, w.to(x.dtype), None if b is None else b.to(x.dtype), stride=c.stride,
                     padding=c.padding, dilation=c.dilation, groups=c.groups)
        return y, self.out_lengths(lens)


class QuantizedWalk:
    """The ConvASR forward with fake-quantized weights and activations at the integer program's
    quantization points (``convert.convert``'s scales), block by block."""

    def __init__(self, model, observers: dict, act_bits: int, bits_of, weight_method: str = "minmax",
                 weight_group: int = 0):
        from ..calibration import quant_points
        from ..models.convasr import walk
        from .bn import fold_batchnorm

        self.model, self.act_bits = model, act_bits

        def act_scale(key, signed):
            return float(scale_from_range(observers[key].alpha(), act_bits, signed=signed))

        def folded(site):
            w = site.conv.weight.detach().double()
            b = site.conv.bias.detach().double() if site.conv.bias is not None else None
            if site.bn is not None:
                w, b = (t.double() for t in fold_batchnorm(w, b, site.bn))
            bits = bits_of(site.conv)
            return FoldedConv(site.name, site.module, site.conv, w, b, grid_step(w, bits, weight_method, weight_group),
                              bits)

        self.input_scale = act_scale("input", True)
        points = quant_points(model)
        sites = walk(model)
        self.blocks = []   # per block: main [(FoldedConv, out_scale, out_signed)], residual [FoldedConv], dense
        for blk in sites.blocks:
            main = []
            for site in blk.main:
                key = (site.block, site.index)
                signed = points[key] is site.module
                main.append((folded(site), act_scale(key, signed), signed))
            self.blocks.append((main, [folded(r) for r in blk.residual], blk.dense))
        self.block_modules = [blk.block for blk in sites.blocks]
        self.decoder = folded(sites.decoder)

    def relu_outputs(self) -> set:
        """Names of the convs whose output goes straight through BatchNorm + ReLU (unsigned, and
        not summed with a residual branch first)."""
        return {f.name for main, res, _ in self.blocks for n, (f, _, signed) in enumerate(main)
                if not signed and (n < len(main) - 1 or not res)}

    def units(self) -> list[list[FoldedConv]]:
        """Every encoder block's convs (main path, then residual branches), then the decoder."""
        return [[f for f, _, _ in main] + res for main, res, _ in self.blocks] + [[self.decoder]]

    def input_points(self, b: int) -> list[tuple[float, bool]]:
        """(scale, signed) of each of block b's inputs: the quantized mel, then the block outputs
        a dense (JasperDR) model passes on."""
        points = [(self.input_scale, True)]
        for main, _, dense in self.blocks[:b]:
            points = points + [(main[-1][1], False)] if dense else [(main[-1][1], False)]
        return points

    def quantize_input(self, mel):
        return fake_quantize(mel, self.input_scale, self.act_bits, True)

    def block(self, b: int, xs: list, lens, weight_of, fq=None):
        """Block b on fake-quantized inputs xs; weight_of(FoldedConv, its input, lengths) -> (the
        float weight to use, a bias shift or None) (called in order, so it may learn from the
        input it is given). fq: the activation fake-quantizer (``fake_quantize``; ``_fq_ste`` to learn through it)."""
        fq = fq or fake_quantize
        main, res, dense = self.blocks[b]
        x, lens_in = xs[-1], lens
        for n, (f, s_out, signed) in enumerate(main):
            y, lens = f.run(x, lens, *weight_of(f, x, lens))
            if n < len(main) - 1:
                x = fq(y, s_out, self.act_bits, signed)
        for x_in, f in zip(xs, res):
            y = y + f.run(x_in, lens_in, *weight_of(f, x_in, lens_in))[0]
        out = fq(y, main[-1][1], self.act_bits, False)   # ReLU = the unsigned clamp
        return (xs + [out] if dense else [out]), lens

    def logits(self, x, lens, weight_of):
        return self.decoder.run(x, lens, *weight_of(self.decoder, x, lens))[0]


# --------------------------------------------------------------------------- cache key

def digest(*parts) -> str:
    h = hashlib.sha256()
    for t in parts:
        if isinstance(t, torch.Tensor):
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        else:
            h.update(json.dumps(t, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(walk: QuantizedWalk, batches, cfg: AdaRoundConfig) -> str:
    # activation scales to 5 significant digits: the calibration pass's float sums differ in the
    # last bits with the thread count, which must not make a finished cache unreachable
    opts = asdict(cfg)
    if not cfg.block_iterations:   # settings added later enter the key only when used: older caches still hit
        opts = {k: v for k, v in opts.items() if not k.startswith("block_")}
    parts = [{"format": CACHE_FORMAT, "cfg": opts, "act_bits": walk.act_bits, "input": f"{walk.input_scale:.5g}",
              "blocks": [[(f.name, f.bits, f"{s:.5g}", sg) for f, s, sg in main] for main, _, _ in walk.blocks]}]
    for unit in walk.units():
        for f in unit:
            parts += [f.name, f.bits, f.weight.float(), f.scale.float()]
    for mel, lens in batches:
        parts += [mel.float(), lens]
    return digest(*parts)


# --------------------------------------------------------------------------- the loop

def _step(f: FoldedConv) -> torch.Tensor:
    """f's grid step, shaped to broadcast against its weight [Cout, C, K] (Conv2d: [Cout, C, kT, kF])."""
    cout = f.weight.shape[0]
    if f.scale.numel() == cout:
        return f.scale.reshape(cout, *[1] * (f.weight.dim() - 1))
    return f.scale.reshape(f.weight.shape)


def _dequantized(f: FoldedConv, codes: torch.Tensor) -> torch.Tensor:
    return codes.reshape(f.weight.shape) * _step(f)


def nearest_codes(f: FoldedConv) -> torch.Tensor:
    lo, hi = qrange(f.bits, signed=True)
    return torch.clamp(torch.round(f.weight / _step(f)), lo, hi)


def _hard_weight(f: FoldedConv, codes: dict, shifts: dict) -> tuple:
    """(float32 weight, float32 bias shift or None) of f's integer codes, as the walk runs them."""
    shift = shifts.get(f.name)
    return _dequantized(f, codes[f.name]).float(), None if shift is None else shift.float()


def learn_conv(f: FoldedConv, grams: Grams, cfg: AdaRoundConfig, relu_cols: torch.Tensor | None = None) -> tuple:
    """(codes, bias shift or None, {"nearest": error, "learned": error}) of one conv; the errors
    are the reconstruction errors of the objective learned on (centered: after the bias shift).
    With ``cfg.scale_search`` f.scale is replaced by the searched one first (both errors on it).
    relu_cols: the float input's columns [N, n] of a conv followed by a ReLU (``cfg.relu_aware``):
    learned on the error after the ReLU instead."""
    H = grams.centered() if cfg.centered else grams.normalised()
    if not cfg.asymmetric:   # the conv's own rounding error only, on the float model's inputs
        H = {**H, "qq": H["ff"], "qf": H["ff"]}
    cout = f.weight.shape[0]
    w = f.weight.reshape(cout, -1)
    if cfg.scale_search:   # the walk then uses this scale for the conv (f.scale is what _dequantized reads)
        if f.scale.numel() != cout:
            raise ValueError("--scale-search searches per-channel scales: not with per-group multipliers (--weight-group)")
        f.scale = search_scale(w, f.scale, f.bits, H)
    s = f.scale.reshape(cout, -1)
    if not cfg.iterations:
        codes = nearest_codes(f).reshape(cout, -1)
    elif relu_cols is not None:
        codes = learn_rounding_relu(w, f.bias, f.scale, f.bits, relu_cols, H["f"], cfg)
    else:
        codes = learn_rounding(w, f.scale, f.bits, H["qq"], H["qf"], cfg, H["ff"])
    errors = {k: reconstruction_error(c * s, w, H["qq"], H["qf"], H["ff"])
              for k, c in (("nearest", nearest_codes(f).reshape(cout, -1)), ("learned", codes))}
    shift = bias_shift(codes * s, w, H["q"], H["f"]) if cfg.centered else None
    return codes.reshape(f.weight.shape), shift, errors


def _mean_shift(f: FoldedConv, xq, xf, lens) -> torch.Tensor:
    """The closed-form bias shift of a conv kept at round-to-nearest (too wide for a Gram
    matrix): only the mean columns are needed."""
    out_lens = f.out_lengths(lens)
    cq, cf = im2col(xq, lens, f.conv, out_lens), im2col(xf, lens, f.conv, out_lens)   # [C, N, K]
    mq, mf = cq.mean(dim=1).reshape(-1), cf.mean(dim=1).reshape(-1)
    cout = f.weight.shape[0]
    return bias_shift(_dequantized(f, nearest_codes(f)).reshape(cout, -1), f.weight.reshape(cout, -1), mq, mf)


V_START = 2.0   # |V| where the block stage starts from hard codes: h(V) = 0.96 / 0.04, inside the sigmoid's slope


def refine_block(walk: QuantizedWalk, b: int, xs_in: list, lens, target: torch.Tensor, float_in: dict,
                 codes: dict, shifts: dict, cfg: AdaRoundConfig, errors: dict) -> dict:
    """Block reconstruction (BRECQ, Li et al. 2021) after the per-conv stage: the rounding of all
    learnable convs of block b, learned at once so that the block's fake-quantized output on xs_in
    matches the float block's output `target` (errors of one conv may then be made up by the next,
    and the ReLU's dead zone costs nothing). Starts from the per-conv codes; activations are
    fake-quantized with the straight-through gradient; each conv's bias shift stays the centered
    objective's closed form mu_f (w - w~), in the graph, so the rounding is not spent on the mean.
    Returns {conv name: codes} of the learnable convs, and updates `shifts` in place; returns {}
    (the per-conv codes stand) when the hard-rounded block's error is above the per-conv codes'.
    errors["block b"]: the block's output error (per frame and channel) with the per-conv codes and after."""
    from ..models.convasr import frame_mask

    main, res, _ = walk.blocks[b]
    convs = [f for f, _, _ in main] + res
    softs, means = {}, {}
    for f in convs:
        if not learnable(f.conv):
            continue
        cout = f.weight.shape[0]
        soft = SoftRounding(f.weight.reshape(cout, -1), f.scale, f.bits)
        up = (codes[f.name].reshape(cout, -1) - soft.floor64) > 0.5
        soft.V.data = torch.where(up, V_START, -V_START).float()
        softs[f.name] = soft

    def mean_column(f, x_lens):
        if f.name not in means:
            c = im2col(float_in[f.name], x_lens, f.conv, f.out_lengths(x_lens)).mean(dim=1)   # [C, K]
            means[f.name] = (c if f.conv.groups > 1 else c.reshape(-1)).float()
        return means[f.name]

    def weight_of(f, x, x_lens, hard=False):
        if f.name not in softs:
            return _hard_weight(f, codes, shifts)
        soft = softs[f.name]
        wq = (soft.codes() * soft.scale.double()).float() if hard else soft.soft_weight()
        shift = (mean_column(f, x_lens) * (f.weight.reshape(wq.shape).float() - wq)).sum(-1)
        return wq.reshape(f.weight.shape), shift

    mask = frame_mask(lens, target.shape[-1])[:, None, :].to(target.dtype)
    count = float(mask.sum()) * target.shape[1]

    def error(hard=False):
        fq = fake_quantize if hard else _fq_ste
        out = walk.block(b, xs_in, lens, lambda f, x, l: weight_of(f, x, l, hard), fq=fq)[0][-1]
        return ((out - target) ** 2 * mask).sum() / count

    with torch.no_grad():
        e0 = max(float(error(hard=True)), 1e-30)
    params = [s.V for s in softs.values()]
    numel = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params, lr=cfg.block_lr)
    block_cfg = AdaRoundConfig(**{**asdict(cfg), "iterations": cfg.block_iterations})
    with torch.enable_grad():
        for it in range(cfg.block_iterations):
            loss = error() / e0
            beta = beta_at(it, block_cfg)
            if beta is not None:
                loss = loss + cfg.block_reg_weight * sum(s.regulariser(beta) for s in softs.values()) / numel
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        e1 = float(error(hard=True))
        errors[f"block {b}"] = {"per_conv": e0, "block": min(e1, e0)}
        if e1 > e0:   # hard rounding lost what the soft one gained: keep the start
            return {}
        learned = {}
        for f in convs:
            if f.name in softs:
                learned[f.name] = softs[f.name].codes().reshape(f.weight.shape)
                w = f.weight.reshape(f.weight.shape[0], -1)
                m = means[f.name].double()
                shifts[f.name] = bias_shift(_dequantized(f, learned[f.name]).reshape(w.shape), w, m, m)
    return learned


def merge_batches(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """All (mel, lengths) batches as one batch, zero-padded to the longest (the walk masks by length)."""
    t = max(int(m.shape[-1]) for m, _ in batches)
    mels = [F.pad(m.float(), (0, t - m.shape[-1])) for m, _ in batches]
    return torch.cat(mels), torch.cat([l.to(torch.int64) for _, l in batches])


@dataclass
class LearnedRounding:
    """What ``adaround`` learns: integer codes and bias shifts (centered objective) per conv, and
    per conv name the reconstruction errors (nearest vs learned) of the newly learned convs."""

    codes: dict                  # {nn.Conv1d: float64 integer codes, the weight's shape}
    bias_shifts: dict            # {nn.Conv1d: float64 [Cout]} (empty when not centered)
    scales: dict                 # {nn.Conv1d: float64 [Cout]} the codes' weight scales (searched ones only)
    errors: dict                 # {conv name: {"nearest": e, "learned": e}} (cached convs: absent), and with the
                                 # block stage {"block b": {"per_conv": e, "block": e}} (``refine_block``)
    seconds: float


def _load_unit(path: Path, unit: list[FoldedConv]) -> tuple[dict, dict, dict]:
    """A cached unit's codes, bias shifts and searched scales (by conv name); the scales are set on the convs."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    codes = {n: c.double() for n, c in payload["codes"].items()}
    shifts = {n: t.double() for n, t in payload["shifts"].items()}
    scales = {n: t.double() for n, t in payload["scales"].items()}
    for f in unit:
        if f.name in scales:
            f.scale = scales[f.name]
    return codes, shifts, scales


def _save_unit(path: Path, codes: dict, shifts: dict, scales: dict) -> None:
    from ..models.checkpoint import atomic_write_bytes

    payload = {"codes": {n: c.to(torch.int16) for n, c in codes.items()},
               "shifts": {n: t.double() for n, t in shifts.items()},
               "scales": {n: t.double() for n, t in scales.items()}}
    atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def _float_unit(walk: QuantizedWalk, u: int, unit: list[FoldedConv], xs_f: list, lens) -> tuple:
    """The float model's inputs of unit u's convs ({name: tensor}), the unit's float outputs and
    their lengths (the decoder unit: its input only)."""
    if u == len(walk.blocks):
        return {walk.decoder.name: xs_f[-1]}, None, lens
    float_in: dict = {}

    def record(module, args, name):
        float_in.setdefault(name, args[0])   # returns None: the input is not replaced

    hooks = [f.module.register_forward_pre_hook(lambda m, a, n=f.name: record(m, a, n)) for f in unit]
    try:
        ys_f, lens_out = walk.block_modules[u](xs_f, lens)
    finally:
        for h in hooks:
            h.remove()
    return float_in, ys_f, lens_out


class _UnitRounding:
    """``QuantizedWalk.block``'s weight_of for one unit: learns each conv's rounding (and bias
    shift) from its quantized and float inputs the first time the conv runs, then uses it hard."""

    def __init__(self, cfg: AdaRoundConfig, relu_after: set, float_in: dict, codes: dict, shifts: dict,
                 scales: dict, errors: dict, bar):
        self.cfg, self.relu_after, self.float_in = cfg, relu_after, float_in
        self.codes, self.shifts, self.scales, self.errors, self.bar = codes, shifts, scales, errors, bar

    def __call__(self, f: FoldedConv, xq, x_lens):
        if f.name not in self.codes:
            cfg, xf = self.cfg, self.float_in[f.name]
            if learnable(f.conv):
                grams = Grams(f.conv)
                grams.add(xq, xf, x_lens, f.out_lengths(x_lens))
                cols = None
                if cfg.relu_aware and not cfg.asymmetric and f.name in self.relu_after:
                    c = im2col(xf, x_lens, f.conv, f.out_lengths(x_lens))   # [C, N, K]
                    cols = c.permute(1, 0, 2).reshape(c.shape[1], -1)
                with torch.enable_grad():
                    self.codes[f.name], shift, self.errors[f.name] = learn_conv(f, grams, cfg, cols)
                if cfg.scale_search:
                    self.scales[f.name] = f.scale
            else:
                self.codes[f.name] = nearest_codes(f)
                shift = _mean_shift(f, xq, xf, x_lens) if cfg.centered else None
            if shift is not None:
                self.shifts[f.name] = shift
        self.bar.update(1)
        return _hard_weight(f, self.codes, self.shifts)


def adaround(model, batches, observers: dict, act_bits: int, bits_of, weight_method: str = "minmax",
             cfg: AdaRoundConfig | None = None, cache_dir=None, progress: bool = True,
             weight_group: int = 0) -> LearnedRounding:
    """Learned rounding for every conv of a ConvASR: integer codes (same shape as the weight, on the
    scale ``quant.weights.quantize_weight`` gives at ``bits_of(conv)``) and, with ``cfg.centered``, the
    closed-form bias shift that goes with them.

    batches: the calibration (mel, lengths) batches (merged into one padded batch); observers:
    ``calibration.collect``'s ranges (the activation scales of the integer program). Convs that
    are neither depthwise nor dense with at most MAX_COLUMNS columns keep round-to-nearest (and
    get the bias shift). weight_group: per-group multipliers (``quant.groups``); the codes are then
    the groups' (the converter multiplies them by the multipliers). Unit by unit (each block, then
    the decoder), cached per unit under cache_dir, so an interrupted run resumes."""
    from tqdm.auto import tqdm

    cfg = cfg or AdaRoundConfig()
    model = model.eval()
    mel, lens = merge_batches(batches)
    walk = QuantizedWalk(model, observers, act_bits, bits_of, weight_method, weight_group)
    folder = Path(cache_dir) / cache_key(walk, [(mel, lens)], cfg) if cache_dir is not None else None
    codes, shifts, scales, errors = {}, {}, {}, {}
    xs_f, xs_q = [mel], [walk.quantize_input(mel)]   # float / quantized block inputs
    units = walk.units()
    relu_after = walk.relu_outputs()
    bar = tqdm(total=sum(len(u) for u in units), desc="adaround convs", disable=not progress)
    start = time.perf_counter()
    with torch.no_grad():
        for u, unit in enumerate(units):
            path = folder / f"block_{u:02d}.pt" if folder is not None else None
            cached = path is not None and path.is_file()
            unit_codes, unit_shifts, unit_scales = _load_unit(path, unit) if cached else ({}, {}, {})
            float_in, ys_f, lens_out = _float_unit(walk, u, unit, xs_f, lens)
            weight_of = _UnitRounding(cfg, relu_after, float_in, unit_codes, unit_shifts, unit_scales, errors, bar)
            if u == len(units) - 1:
                walk.logits(xs_q[-1], lens, weight_of)
            else:
                xs_in = xs_q
                xs_q, _ = walk.block(u, xs_in, lens, weight_of)
                if cfg.block_iterations and not cached:
                    # the block's input as the per-conv stage saw it: the float model's (symmetric) or the walk's
                    x_ref = xs_in if cfg.asymmetric else [fake_quantize(x, s, walk.act_bits, sg) for x, (s, sg) in
                                                           zip(xs_f, walk.input_points(u))]
                    unit_codes.update(refine_block(walk, u, x_ref, lens, ys_f[-1], float_in, unit_codes,
                                                   unit_shifts, cfg, errors))
                    e = errors[f"block {u}"]
                    if progress:
                        bar.write(f"block {u}: output error {e['per_conv']:.4g} per conv -> {e['block']:.4g}")
                    xs_q, _ = walk.block(u, xs_in, lens, lambda f, x, l: _hard_weight(f, unit_codes, unit_shifts))
                xs_f, lens = ys_f, lens_out
            if path is not None and not cached:
                _save_unit(path, unit_codes, unit_shifts, unit_scales)
            for f in unit:
                codes[f.conv] = unit_codes[f.name].reshape(f.weight.shape)
                if f.name in unit_shifts:
                    shifts[f.conv] = unit_shifts[f.name]
                if f.name in unit_scales:
                    scales[f.conv] = unit_scales[f.name]
            bar.set_postfix(block=u, seconds=f"{time.perf_counter() - start:.0f}")
    bar.close()
    return LearnedRounding(codes, shifts, scales, errors, time.perf_counter() - start)
