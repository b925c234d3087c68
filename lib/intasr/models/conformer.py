"""Conformer-CTC (NeMo's `ConformerEncoder` + `ConvASRDecoder`) in plain PyTorch, NeMo's state-dict keys.

One file, read top to bottom: the convolutional subsampling (`pre_encode`), the positional
encodings, the two attention kinds, the feed-forward and convolution modules, the Conformer
layer, the encoder, and the whole model (mel front end + encoder + CTC decoder). Module and
parameter names follow NeMo 1.x-3.x exactly (`encoder.pre_encode.conv.0.weight`,
`encoder.layers.{i}.self_attn.pos_bias_u`, `encoder.layers.{i}.conv.batch_norm.running_mean`,
`decoder.decoder_layers.0.weight`, ...), so a NeMo `model_weights.ckpt` loads with
`load_state_dict(strict=True)` and a state dict we save loads in NeMo. Nothing here imports NeMo.

One Conformer layer (NeMo's `ConformerLayer`, x is [B, T, d]):
    x = x + 0.5 * FF1(LN_ff1(x))                     macaron half-step feed-forward
    x = x + MHSA(LN_att(x), pos_emb, att_mask)        relative (or absolute) positional attention
    x = x + Conv(LN_conv(x), pad_mask)                pw d->2d, GLU, dw k31, BatchNorm, Swish, pw d->d
    x = x + 0.5 * FF2(LN_ff2(x))
    x = LN_out(x)
FF = Linear(d, 4d), Swish, Linear(4d, d). Dropout is left out: this library only runs inference.

Every non-linear step is its own module or a named function call, and every linear map is an
`nn.Linear` / `nn.Conv1d` / `nn.Conv2d`, so an integer converter can walk the blocks and replace
them one by one (no fused attention kernels, no `scaled_dot_product_attention`).

Masking (what makes a padded batch give each utterance's own result, as in NeMo 2.x/3.x):
- subsampling: padded frames are zeroed before every layer of the Conv2d stack and after it
  (NeMo's `MaskedConvSequential`); older NeMo (1.x) did not, so there the last valid frames of a
  short utterance in a padded batch saw padding;
- attention: a score (query i, key j) is masked when i or j is a padded frame; masked scores are
  set to -10000 (NeMo's `INF_VAL`, not -inf: a fully masked row then softmaxes to a uniform row
  instead of NaN) and the softmax output is zeroed there afterwards (so padded query rows give 0);
- convolution module: padded frames are zeroed after the GLU, right before the depthwise conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..audio import frontend_from_config
from .convasr import ConvASRDecoder, CTCModel, frame_mask

# NeMo's value for masked attention scores (multi_head_attention.INF_VAL).
MASKED_SCORE = -10000.0

SUBSAMPLINGS_2D = ("striding", "dw_striding")
SUBSAMPLINGS_1D = ("striding_conv1d", "dw_striding_conv1d")
# NeMo's subsampling always uses ReLU; the others are an option for non-NeMo models (hama: GELU).
SUBSAMPLING_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


# ---------------------------------------------------------------------------------------------
# Subsampling (NeMo's ConvSubsampling): mel [B, T, F] -> [B, T / factor, d_model]
# ---------------------------------------------------------------------------------------------

def conv_output_lengths(lengths: torch.Tensor, kernel: int, stride: int, padding: int, repeat: int = 1) -> torch.Tensor:
    """floor((L + 2p - k) / s) + 1, `repeat` times: the frame count after each strided conv.

    NeMo computes the same in float (`calc_length`); in integers it is exact for any length.
    """
    lengths = lengths.long()
    for _ in range(repeat):
        lengths = torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    return lengths


class ConvSubsampling(nn.Module):
    """Time reduction by `factor` (a power of 2) with stride-2 convolutions, then a Linear to d_model.

    striding:    [Conv2d(1 -> C, k3, s2), ReLU] then [Conv2d(C -> C, k3, s2), ReLU] * (n - 1)
    dw_striding: Conv2d(1 -> C, k3, s2), ReLU, then [dw Conv2d(C, k3, s2), pw Conv2d(C -> C), ReLU] * (n - 1)
    The 2-D convs treat (time, mel) as an image with one input channel, so the mel axis shrinks
    too (80 -> 40 -> 20); `out` = Linear(C * 20, d_model) flattens (channels, mel) per frame.
    striding_conv1d / dw_striding_conv1d: the same idea with Conv1d over time (mel bins are the
    channels, kernel 5, padding 2), the last conv emitting d_model channels; no `out` Linear.
    Module indices in `conv` match NeMo's (ReLUs included), so the keys do.
    Two options beyond NeMo (its values are the defaults), for the conv1d kinds only:
    `kernel_size` (padding (k - 1) // 2) and `activation` ("relu", "gelu" (erf) or "silu");
    the `hama` model is striding_conv1d, factor 2, kernel 3, GELU.
    """

    def __init__(self, subsampling: str, factor: int, feat_in: int, feat_out: int, conv_channels: int,
                 kernel_size: int | None = None, activation: str = "relu"):
        super().__init__()
        if activation not in SUBSAMPLING_ACTIVATIONS:
            raise ValueError(f"subsampling activation {activation!r} not supported "
                             f"(use one of {sorted(SUBSAMPLING_ACTIVATIONS)})")
        if subsampling in SUBSAMPLINGS_2D and (activation != "relu" or kernel_size not in (None, 3)):
            raise ValueError(f"{subsampling} subsampling supports only NeMo's kernel 3 and ReLU")
        k1d = 5 if kernel_size is None else int(kernel_size)
        if k1d < 1 or k1d % 2 != 1:
            raise ValueError(f"subsampling kernel size must be odd and positive, got {kernel_size}")
        act = SUBSAMPLING_ACTIVATIONS[activation]
        if factor < 2 or factor & (factor - 1):
            raise ValueError(f"subsampling_factor must be a power of 2 (>= 2), got {factor}")
        n = int(math.log2(factor))
        self.subsampling, self.factor, self.n = subsampling, factor, n
        c = conv_channels
        layers: list[nn.Module] = []
        if subsampling == "striding":
            self.kernel, self.padding, self.stride = 3, 1, 2
            for i in range(n):
                layers += [nn.Conv2d(1 if i == 0 else c, c, 3, stride=2, padding=1), nn.ReLU()]
        elif subsampling == "dw_striding":
            self.kernel, self.padding, self.stride = 3, 1, 2
            layers += [nn.Conv2d(1, c, 3, stride=2, padding=1), nn.ReLU()]
            for _ in range(n - 1):
                layers += [nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c), nn.Conv2d(c, c, 1), nn.ReLU()]
        elif subsampling == "striding_conv1d":
            self.kernel, self.padding, self.stride = k1d, (k1d - 1) // 2, 2
            cin = feat_in
            for i in range(n):
                cout = feat_out if i == n - 1 else c
                layers += [nn.Conv1d(cin, cout, k1d, stride=2, padding=self.padding), act()]
                cin = c
        elif subsampling == "dw_striding_conv1d":
            self.kernel, self.padding, self.stride = k1d, (k1d - 1) // 2, 2
            cin = feat_in
            for i in range(n):
                cout = feat_out if i == n - 1 else c
                layers += [nn.Conv1d(cin, cin, k1d, stride=2, padding=self.padding, groups=cin),
                           nn.Conv1d(cin, cout, 1), act()]
                cin = c
        else:
            raise ValueError(f"subsampling {subsampling!r} not supported "
                             f"(use one of {SUBSAMPLINGS_2D + SUBSAMPLINGS_1D})")
        self.conv = nn.Sequential(*layers)
        self.is_2d = subsampling in SUBSAMPLINGS_2D
        if self.is_2d:
            freq = feat_in                          # plain ints: also works on the meta device
            for _ in range(n):
                freq = (freq + 2 * 1 - 3) // 2 + 1
            self.out = nn.Linear(c * freq, feat_out)
        else:
            self.out = None

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(lengths, self.kernel, self.stride, self.padding, self.n)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x [B, T, F] (time first, like NeMo's pre_encode input) -> ([B, T', d_model], lengths')."""
        lengths = lengths.long()
        if self.is_2d:
            x = x.unsqueeze(1)                      # [B, 1, T, F]: one-channel image, time = height

            def mask(t, lens):
                return t * frame_mask(lens, t.shape[2])[:, None, :, None].to(t.dtype)
        else:
            x = x.transpose(1, 2)                   # [B, F, T]: mel bins are channels

            def mask(t, lens):
                return t * frame_mask(lens, t.shape[2])[:, None, :].to(t.dtype)

        for layer in self.conv:
            x = layer(mask(x, lengths))
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.stride[0] != 1:
                lengths = conv_output_lengths(lengths, self.kernel, self.stride, self.padding)
        x = mask(x, lengths)
        if self.is_2d:
            b, c, t, f = x.shape
            x = self.out(x.transpose(1, 2).reshape(b, t, c * f))   # per frame: (channel, mel) flattened
        else:
            x = x.transpose(1, 2)
        return x, lengths


# ---------------------------------------------------------------------------------------------
# Positional encodings
# ---------------------------------------------------------------------------------------------

def sinusoid_table(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """[P, d_model] sinusoids: even dims sin(p * w_i), odd dims cos(p * w_i), w_i = 10000^(-2i/d).

    Computed in float32 whatever the model dtype, exactly as NeMo builds its `pe` buffer (float32,
    then cast), so a float64 model sees the very numbers the float32-trained model saw.
    """
    positions = positions.to(torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device)
                         * -(math.log(10000.0) / d_model))
    pe = torch.zeros(positions.shape[0], d_model, device=positions.device)
    pe[:, 0::2] = torch.sin(positions * inv_freq)
    pe[:, 1::2] = torch.cos(positions * inv_freq)
    return pe


class PositionalEncoding(nn.Module):
    """Absolute positions (abs_pos): x * xscale + sinusoid(0..T-1). Returns (x, pos_emb [1, T, d]).

    add_sinusoids=False (an option beyond NeMo, for abs_pos models trained without positional
    encodings, like the `hama` Conformer): x * xscale only, pos_emb None.
    """

    def __init__(self, d_model: int, xscale: float | None, add_sinusoids: bool = True):
        super().__init__()
        self.d_model, self.xscale, self.add_sinusoids = d_model, xscale, add_sinusoids

    def positions(self, t: int, device) -> torch.Tensor:
        return torch.arange(0, t, device=device)

    def forward(self, x: torch.Tensor):
        if self.xscale:
            x = x * self.xscale
        if not self.add_sinusoids:
            return x, None
        pos_emb = sinusoid_table(self.positions(x.shape[1], x.device), self.d_model).to(x.dtype)[None]
        return x + pos_emb, pos_emb


class RelPositionalEncoding(PositionalEncoding):
    """Relative positions (rel_pos): x * xscale unchanged otherwise, and the sinusoids of the
    2T-1 relative distances T-1, T-2, ..., -(T-1) (left context positive), [1, 2T-1, d].

    NeMo precomputes these for pos_emb_max_len and slices; computing them per call gives the same
    values (same float32 arithmetic per position) and has no length limit.
    """

    def positions(self, t: int, device) -> torch.Tensor:
        return torch.arange(t - 1, -t, -1, device=device)

    def forward(self, x: torch.Tensor):
        if self.xscale:
            x = x * self.xscale
        pos_emb = sinusoid_table(self.positions(x.shape[1], x.device), self.d_model).to(x.dtype)[None]
        return x, pos_emb


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """NeMo's attention softmax: masked scores -> -10000, softmax over keys, masked probs -> 0.

    scores [B, H, T, T]; mask [B, T, T] bool, True where (query, key) must not attend.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    mask = mask[:, None]
    return torch.softmax(scores.masked_fill(mask, MASKED_SCORE), dim=-1).masked_fill(mask, 0.0)


class MultiHeadAttention(nn.Module):
    """Plain multi-head self-attention (abs_pos): softmax(Q K^T / sqrt(d_k)) V, then linear_out."""

    def __init__(self, n_heads: int, d_model: int, use_bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.h, self.d_k = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model, bias=use_bias)
        self.linear_k = nn.Linear(d_model, d_model, bias=use_bias)
        self.linear_v = nn.Linear(d_model, d_model, bias=use_bias)
        self.linear_out = nn.Linear(d_model, d_model, bias=use_bias)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, H, T, d_k]."""
        b, t, _ = x.shape
        return x.view(b, t, self.h, self.d_k).transpose(1, 2)

    def attend(self, scores: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
        """scores [B, H, T, T] (already scaled), v [B, H, T, d_k] -> linear_out(concat heads) [B, T, d]."""
        attn = masked_softmax(scores, mask)
        out = torch.matmul(attn, v)                               # [B, H, T, d_k]
        b, _, t, _ = out.shape
        return self.linear_out(out.transpose(1, 2).reshape(b, t, self.h * self.d_k))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pos_emb: torch.Tensor | None = None):
        q, k, v = self.heads(self.linear_q(x)), self.heads(self.linear_k(x)), self.heads(self.linear_v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self.attend(scores, v, mask)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, 2T-1] scores against relative positions (T-1 ... -(T-1)) -> [B, H, T, T] with
    out[..., i, j] = x[..., i, (T-1) - i + j], the score for distance i - j.

    The Transformer-XL trick NeMo uses: pad one zero column on the left, reinterpret the
    [T, 2T] buffer as [2T, T], drop the first row, reinterpret as [T, 2T-1], keep the first T
    columns. Pure reshapes, so it works on integer tensors unchanged.
    """
    b, h, t, p = x.shape
    x = F.pad(x, (1, 0)).view(b, h, p + 1, t)
    return x[:, :, 1:].reshape(b, h, t, p)[:, :, :, :t]


class RelPositionMultiHeadAttention(MultiHeadAttention):
    """Transformer-XL attention (rel_pos), NeMo's `RelPositionMultiHeadAttention`:

        scores = ((q + u) k^T + rel_shift((q + v) p^T)) / sqrt(d_k),   p = linear_pos(pos_emb)

    u = pos_bias_u, v = pos_bias_v: [H, d_k] learned per layer (or shared when untie_biases=False).
    """

    def __init__(self, n_heads: int, d_model: int, use_bias: bool = True,
                 pos_bias_u: nn.Parameter | None = None, pos_bias_v: nn.Parameter | None = None):
        super().__init__(n_heads, d_model, use_bias)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = pos_bias_u if pos_bias_u is not None else nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = pos_bias_v if pos_bias_v is not None else nn.Parameter(torch.zeros(self.h, self.d_k))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pos_emb: torch.Tensor | None = None):
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)             # [B, T, H, d_k]
        k, v = self.heads(self.linear_k(x)), self.heads(self.linear_v(x))
        p = self.heads(self.linear_pos(pos_emb))                      # [1, H, 2T-1, d_k]
        q_u = (q + self.pos_bias_u).transpose(1, 2)                   # [B, H, T, d_k]
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        content = torch.matmul(q_u, k.transpose(-2, -1))              # [B, H, T, T]   (NeMo's matrix_ac)
        position = rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))  # [B, H, T, T]   (matrix_bd)
        return self.attend((content + position) / math.sqrt(self.d_k), v, mask)


# ---------------------------------------------------------------------------------------------
# Feed-forward and convolution modules, the layer
# ---------------------------------------------------------------------------------------------

class ConformerFeedForward(nn.Module):
    """Linear(d, d_ff), Swish, Linear(d_ff, d)."""

    def __init__(self, d_model: int, d_ff: int, use_bias: bool = True):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff, bias=use_bias)
        self.activation = nn.SiLU()          # NeMo's Swish is nn.SiLU
        self.linear2 = nn.Linear(d_ff, d_model, bias=use_bias)

    def forward(self, x):
        return self.linear2(self.activation(self.linear1(x)))


class ConformerConvolution(nn.Module):
    """pointwise_conv1 (d -> 2d), GLU, [zero padded frames], depthwise_conv (k, 'same'),
    batch_norm, Swish, pointwise_conv2 (d -> d). Input and output [B, T, d]."""

    def __init__(self, d_model: int, kernel_size: int, use_bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, got {kernel_size}")
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1, bias=use_bias)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, padding=(kernel_size - 1) // 2,
                                        groups=d_model, bias=use_bias)
        self.batch_norm = nn.BatchNorm1d(d_model)   # eps 1e-5, NeMo's default here (not ConvASR's 1e-3)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1, bias=use_bias)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None):
        """pad_mask [B, T] bool, True on padded frames (NeMo's convention)."""
        x = self.pointwise_conv1(x.transpose(1, 2))
        x = F.glu(x, dim=1)                           # first half * sigmoid(second half)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask[:, None, :], 0.0)
        x = self.depthwise_conv(x)
        x = self.activation(self.batch_norm(x))
        return self.pointwise_conv2(x).transpose(1, 2)


class ConformerLayer(nn.Module):
    """One Conformer block; see the module docstring for the order of its parts."""

    fc_factor = 0.5  # macaron: each feed-forward contributes half a step

    def __init__(self, d_model: int, d_ff: int, n_heads: int, conv_kernel_size: int,
                 self_attention_model: str = "rel_pos", use_bias: bool = True,
                 pos_bias_u: nn.Parameter | None = None, pos_bias_v: nn.Parameter | None = None):
        super().__init__()
        self.norm_feed_forward1 = nn.LayerNorm(d_model)
        self.feed_forward1 = ConformerFeedForward(d_model, d_ff, use_bias)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConformerConvolution(d_model, conv_kernel_size, use_bias)
        self.norm_self_att = nn.LayerNorm(d_model)
        if self_attention_model == "rel_pos":
            self.self_attn = RelPositionMultiHeadAttention(n_heads, d_model, use_bias, pos_bias_u, pos_bias_v)
        elif self_attention_model == "abs_pos":
            self.self_attn = MultiHeadAttention(n_heads, d_model, use_bias)
        else:
            raise ValueError(f"self_attention_model {self_attention_model!r} not supported (rel_pos, abs_pos)")
        self.norm_feed_forward2 = nn.LayerNorm(d_model)
        self.feed_forward2 = ConformerFeedForward(d_model, d_ff, use_bias)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x, att_mask=None, pos_emb=None, pad_mask=None):
        x = x + self.fc_factor * self.feed_forward1(self.norm_feed_forward1(x))
        x = x + self.self_attn(self.norm_self_att(x), att_mask, pos_emb)
        x = x + self.conv(self.norm_conv(x), pad_mask)
        x = x + self.fc_factor * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x)


# ---------------------------------------------------------------------------------------------
# Encoder and model
# ---------------------------------------------------------------------------------------------

# NeMo ConformerEncoder options that only matter for training (or are ignored at their defaults).
_TRAINING_ONLY = {"dropout", "dropout_pre_encoder", "dropout_emb", "dropout_att", "stochastic_depth_drop_prob",
                  "stochastic_depth_mode", "stochastic_depth_start_layer", "subsampling_conv_chunking_factor",
                  "pos_emb_max_len", "use_pytorch_sdpa", "use_pytorch_sdpa_backends", "sync_max_audio_length",
                  "_target_"}


def _unsupported(opts: dict) -> list[str]:
    """Options of a NeMo encoder config this implementation would silently get wrong."""
    bad = []

    def unlimited(ctx):
        if ctx is None:
            return True
        if isinstance(ctx, (list, tuple)) and ctx and isinstance(ctx[0], (list, tuple)):
            ctx = ctx[0]  # multi-context training: inference uses the first
        return all(int(c) == -1 for c in ctx)

    if not unlimited(opts.get("att_context_size")):
        bad.append(f"att_context_size={opts['att_context_size']} (only unlimited [-1, -1])")
    if opts.get("att_context_style", "regular") not in ("regular", "chunked_limited") or (
            opts.get("att_context_style", "regular") != "regular" and not unlimited(opts.get("att_context_size"))):
        bad.append(f"att_context_style={opts['att_context_style']}")
    if opts.get("conv_context_size") not in (None, "null"):
        k = int(opts.get("conv_kernel_size", 31))
        if list(opts["conv_context_size"]) != [(k - 1) // 2, (k - 1) // 2]:
            bad.append(f"conv_context_size={opts['conv_context_size']}")
    if opts.get("conv_norm_type", "batch_norm") != "batch_norm":
        bad.append(f"conv_norm_type={opts['conv_norm_type']}")
    if opts.get("causal_downsampling", False):
        bad.append("causal_downsampling=true")
    if opts.get("reduction") and int(opts.get("reduction_factor", 1)) > 1:
        bad.append(f"reduction={opts['reduction']}")
    if int(opts.get("global_tokens", 0)) != 0:
        bad.append("global_tokens")
    if opts.get("conv_context_style", "regular") != "regular":
        bad.append(f"conv_context_style={opts['conv_context_style']}")
    return bad


class ConformerEncoder(nn.Module):
    """NeMo's ConformerEncoder (offline, full context): mel [B, F, T] -> ([B, d, T/4], lengths).

    Takes the keyword arguments of NeMo's `encoder` config section; options that only affect
    training (dropouts, stochastic depth, chunking) are accepted and ignored, options that
    change inference and are not implemented raise a ValueError naming them.
    Options beyond NeMo (NeMo's behaviour is the default): `subsampling_conv_kernel_size` and
    `subsampling_activation` (conv1d subsampling kinds), `pos_emb: none` (abs_pos without
    sinusoids); see models/hama.py for the model that needs them.
    """

    def __init__(self, feat_in: int, n_layers: int, d_model: int, feat_out: int = -1,
                 subsampling: str | None = "striding", subsampling_factor: int = 4,
                 subsampling_conv_channels: int = -1, ff_expansion_factor: int = 4,
                 self_attention_model: str = "rel_pos", n_heads: int = 4, xscaling: bool = True,
                 untie_biases: bool = True, conv_kernel_size: int = 31, use_bias: bool = True,
                 subsampling_conv_kernel_size: int | None = None, subsampling_activation: str = "relu",
                 pos_emb: str = "sinusoid", **options):
        super().__init__()
        bad = _unsupported(options)
        unknown = set(options) - _TRAINING_ONLY - {
            "att_context_size", "att_context_probs", "att_context_style", "conv_context_size", "conv_norm_type",
            "causal_downsampling", "reduction", "reduction_position", "reduction_factor", "global_tokens",
            "global_tokens_spacing", "global_attn_separate", "conv_context_style", "att_chunk_context_size",
            "conv_dual_mode"}
        if unknown:
            bad.append(f"unknown option(s) {sorted(unknown)}")
        if bad:
            raise ValueError(f"ConformerEncoder option(s) not supported: {'; '.join(bad)}")
        self.feat_in, self.d_model, self.n_layers = feat_in, d_model, n_layers
        self.self_attention_model = self_attention_model
        self.xscale = math.sqrt(d_model) if xscaling else None
        if pos_emb not in ("sinusoid", "none") or (pos_emb == "none" and self_attention_model != "abs_pos"):
            raise ValueError(f"pos_emb {pos_emb!r} not supported (sinusoid, or none with abs_pos)")
        if subsampling_conv_channels == -1:
            subsampling_conv_channels = d_model
        if subsampling and subsampling_factor > 1:
            self.pre_encode = ConvSubsampling(subsampling, subsampling_factor, feat_in, d_model,
                                              subsampling_conv_channels, subsampling_conv_kernel_size,
                                              subsampling_activation)
        else:
            self.pre_encode = nn.Linear(feat_in, d_model)

        if self_attention_model == "rel_pos":
            self.pos_enc = RelPositionalEncoding(d_model, self.xscale)
        elif self_attention_model == "abs_pos":
            self.pos_enc = PositionalEncoding(d_model, self.xscale, add_sinusoids=pos_emb != "none")
        else:
            raise ValueError(f"self_attention_model {self_attention_model!r} not supported (rel_pos, abs_pos)")

        # untie_biases=False: one (u, v) pair shared by all layers (each layer's state dict still
        # lists it under its own key, as in NeMo).
        shared_u = shared_v = None
        if not untie_biases and self_attention_model == "rel_pos":
            shared_u = nn.Parameter(torch.zeros(n_heads, d_model // n_heads))
            shared_v = nn.Parameter(torch.zeros(n_heads, d_model // n_heads))
        self.layers = nn.ModuleList(
            ConformerLayer(d_model, d_model * ff_expansion_factor, n_heads, conv_kernel_size, self_attention_model,
                           use_bias, shared_u, shared_v)
            for _ in range(n_layers))
        if feat_out > 0 and feat_out != d_model:
            self.out_proj = nn.Linear(d_model, feat_out)
            self.feat_out = feat_out
        else:
            self.out_proj = None
            self.feat_out = d_model

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        if isinstance(self.pre_encode, ConvSubsampling):
            return self.pre_encode.output_lengths(lengths)
        return lengths.long()

    @staticmethod
    def masks(lengths: torch.Tensor, t: int):
        """(pad_mask [B, T], att_mask [B, T, T]), both True where masked (NeMo's convention):
        a padded frame, or a (query, key) pair either of which is padded."""
        valid = frame_mask(lengths, t)
        att_mask = ~(valid[:, :, None] & valid[:, None, :])
        return ~valid, att_mask

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x: mel [B, F, T], lengths [B] -> (encoded [B, d, T'], lengths [B] int64)."""
        if x.shape[1] != self.feat_in:
            raise ValueError(f"expected features [B, {self.feat_in}, T], got {tuple(x.shape)}")
        x = x.transpose(1, 2)                               # [B, T, F]
        if isinstance(self.pre_encode, ConvSubsampling):
            x, lengths = self.pre_encode(x, lengths)
        else:
            x, lengths = self.pre_encode(x), lengths.long()
        x, pos_emb = self.pos_enc(x)
        pad_mask, att_mask = self.masks(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, att_mask, pos_emb, pad_mask)
        if self.out_proj is not None:
            x = self.out_proj(x)
        return x.transpose(1, 2), lengths


class ConformerCTC(CTCModel):
    """The whole CTC model: `preprocessor` (mel) -> `encoder` (Conformer) -> `decoder` (1x1 conv).

    Built from a NeMo model config (see `configs.conformer_ctc_config`); the same interface as
    `ConvASR` (both are `convasr.CTCModel`s): `features`, `forward_features`, `forward`, `log_probs`,
    `labels`, `config`, `batchnorms`. For BPE models `labels` are the SentencePiece pieces with the word-boundary
    mark '▁' turned into a space, so plain greedy CTC decoding ("".join of labels, as
    `text.ctc_greedy_decode` does) gives the text; `tokenizer` (when given) decodes exactly.
    """

    def __init__(self, config: dict, tokenizer=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        dec_cfg = dict(config["decoder"])
        vocabulary = list(dec_cfg.get("vocabulary") or config.get("labels") or [])
        if int(dec_cfg.get("num_classes", -1)) <= 0:
            dec_cfg["num_classes"] = len(vocabulary)  # NeMo: num_classes -1 means len(vocabulary)
        if dec_cfg.get("feat_in") in (None, -1):
            dec_cfg["feat_in"] = config["encoder"].get("feat_out", -1) if int(config["encoder"].get("feat_out", -1)) > 0 \
                else config["encoder"]["d_model"]
        if tokenizer is not None and tokenizer.vocabulary != vocabulary:
            raise ValueError(f"tokenizer pieces ({tokenizer.vocab_size}) differ from the decoder vocabulary "
                             f"({len(vocabulary)}); build the config with vocabulary=tokenizer.vocabulary")
        self.vocabulary = vocabulary
        self.labels = [piece.replace("\u2581", " ") for piece in vocabulary]
        self.preprocessor = nn.Module()
        self.preprocessor.featurizer = frontend_from_config(config.get("preprocessor", {}))
        self.encoder = ConformerEncoder(**config["encoder"])
        self.decoder = ConvASRDecoder(**dec_cfg)
        if self.decoder.num_classes != len(self.labels) + 1:
            raise ValueError(f"decoder has {self.decoder.num_classes - 1} classes but {len(self.labels)} labels")
        self.eval()

    def decode(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC transcripts: with the tokenizer when there is one (BPE), else the labels."""
        from ..text import ctc_greedy_decode

        if self.tokenizer is not None:
            from ..tokenizer import ctc_greedy_decode_bpe

            return ctc_greedy_decode_bpe(logits, lengths, self.tokenizer, time_axis=2)
        return ctc_greedy_decode(logits, lengths, self.labels, time_axis=2)
