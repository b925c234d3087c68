"""ConvASR (QuartzNet, JasperDR) in plain PyTorch, with NeMo's state-dict keys.

One file, read top to bottom: the masked 1-D convolution, the Jasper block (sub-blocks,
residual branches, dense residuals), the encoder, the CTC decoder, and the whole model
(mel front end + encoder + decoder). Module names follow NeMo's `ConvASREncoder` /
`JasperBlock` / `ConvASRDecoder` exactly, so a NeMo `model_weights.ckpt` loads with
`load_state_dict(strict=True)` and a state dict we save loads in NeMo.

Key layout of a block (NeMo's `JasperBlock.mconv` list), separable, repeat R:
    [dw conv, pw conv, BN, act, dropout] * (R-1) + [dw conv, pw conv, BN]
non-separable (Jasper):
    [conv, BN, act, dropout] * (R-1) + [conv, BN]
residual branches `res.{i}` = [1x1 conv, BN], one per dense input (one if not dense);
out = act(main + sum(residuals)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..audio import MelFrontend

ACTIVATIONS = {"relu": nn.ReLU, "hardtanh": lambda: nn.Hardtanh(0.0, 20.0)}


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, T] bool, True on valid frames (t < length)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class MaskedConv1d(nn.Module):
    """Conv1d that zeroes padded frames of its input first, so padding never leaks.

    This is what makes a padded batch give the same result as each utterance alone.
    """

    def __init__(self, cin, cout, kernel, stride=1, dilation=1, groups=1, bias=False, use_mask=True):
        super().__init__()
        if stride > 1 and dilation > 1:
            raise ValueError("NeMo's 'same' padding does not allow stride > 1 with dilation > 1")
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, bias=bias)
        self.use_mask = use_mask

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        c = self.conv
        span = c.dilation[0] * (c.kernel_size[0] - 1)
        return torch.div(lengths + 2 * c.padding[0] - span - 1, c.stride[0], rounding_mode="floor") + 1

    def forward(self, x, lengths):
        if self.use_mask:
            x = x * frame_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        return self.conv(x), self.output_lengths(lengths)


@dataclass
class BlockConfig:
    """One entry of NeMo's `encoder.jasper` list (only the keys this library supports)."""

    filters: int
    repeat: int = 1
    kernel: int = 11
    stride: int = 1
    dilation: int = 1
    dropout: float = 0.0
    residual: bool = False
    separable: bool = False
    residual_dense: bool = False

    @classmethod
    def from_nemo(cls, d: dict) -> "BlockConfig":
        unsupported = {k for k, v in d.items() if k in ("se", "groups", "heads", "stride_last") and v not in (False, 1, -1)}
        unsupported |= {k for k in d if k == "residual_mode" and d[k] != "add"}
        unsupported |= {k for k in d if k == "kernel_size_factor" and float(d[k]) != 1.0}
        if unsupported:
            raise ValueError(f"encoder block option(s) not supported: {sorted(unsupported)} in {d}")

        def one(v):
            return int(v[0] if isinstance(v, (list, tuple)) else v)

        return cls(filters=int(d["filters"]), repeat=int(d.get("repeat", 1)), kernel=one(d.get("kernel", 11)),
                   stride=one(d.get("stride", 1)), dilation=one(d.get("dilation", 1)),
                   dropout=float(d.get("dropout", 0.0)), residual=bool(d.get("residual", False)),
                   separable=bool(d.get("separable", False)), residual_dense=bool(d.get("residual_dense", False)))


class JasperBlock(nn.Module):
    def __init__(self, cin: int, cfg: BlockConfig, activation: str, residual_inputs: list[int], conv_mask=True):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c = cin
        for r in range(cfg.repeat):
            if cfg.separable:
                layers.append(MaskedConv1d(c, c, cfg.kernel, cfg.stride, cfg.dilation, groups=c, use_mask=conv_mask))
                layers.append(MaskedConv1d(c, cfg.filters, 1, use_mask=conv_mask))
            else:
                layers.append(MaskedConv1d(c, cfg.filters, cfg.kernel, cfg.stride, cfg.dilation, use_mask=conv_mask))
            layers.append(nn.BatchNorm1d(cfg.filters, eps=1e-3, momentum=0.1))
            if r < cfg.repeat - 1:
                layers += [ACTIVATIONS[activation](), nn.Dropout(cfg.dropout)]
            c = cfg.filters
        self.mconv = nn.ModuleList(layers)
        # NeMo: residual branches see the block's (dense) inputs, with the block's stride.
        self.res = None
        if cfg.residual:
            self.res = nn.ModuleList(
                nn.ModuleList([MaskedConv1d(ci, cfg.filters, 1, stride=cfg.stride, use_mask=conv_mask),
                               nn.BatchNorm1d(cfg.filters, eps=1e-3, momentum=0.1)])
                for ci in residual_inputs)
        self.dense = cfg.residual and cfg.residual_dense and len(residual_inputs) > 0
        self.mout = nn.Sequential(ACTIVATIONS[activation](), nn.Dropout(cfg.dropout))

    def forward(self, xs: list[torch.Tensor], lengths: torch.Tensor):
        out, lens = xs[-1], lengths
        for layer in self.mconv:
            if isinstance(layer, MaskedConv1d):
                out, lens = layer(out, lens)
            else:
                out = layer(out)
        if self.res is not None:
            for x_in, (conv, bn) in zip(xs, self.res):
                out = out + bn(conv(x_in, lengths)[0])
        out = self.mout(out)
        return (xs + [out] if self.dense else [out]), lens


class ConvASREncoder(nn.Module):
    def __init__(self, feat_in: int, jasper: list[dict], activation: str = "relu", conv_mask: bool = True,
                 frame_splicing: int = 1, **unused):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} not supported (use one of {sorted(ACTIVATIONS)})")
        feat_in = feat_in * frame_splicing
        self.feat_in = feat_in
        blocks, dense_inputs = [], []
        for d in jasper:
            cfg = BlockConfig.from_nemo(dict(d))
            if cfg.residual_dense:
                dense_inputs.append(feat_in)  # NeMo shares and grows one list across dense blocks
                res_in = list(dense_inputs)
            else:
                res_in = [feat_in]
            blocks.append(JasperBlock(feat_in, cfg, activation, res_in, conv_mask))
            feat_in = cfg.filters
        self.feat_out = feat_in
        self.encoder = nn.Sequential(*blocks)

    def forward(self, x, lengths):
        xs = [x]
        for block in self.encoder:
            xs, lengths = block(xs, lengths)
        return xs[-1], lengths


class ConvASRDecoder(nn.Module):
    """1x1 conv to vocabulary + blank. Returns raw logits [B, C, T] (log-softmax is monotone,
    so greedy CTC needs none; `ConvASR.log_probs` applies it where NeMo does)."""

    def __init__(self, feat_in: int, num_classes: int, vocabulary: list[str] | None = None, **unused):
        super().__init__()
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.num_classes = num_classes + 1  # + CTC blank, last
        self.decoder_layers = nn.Sequential(nn.Conv1d(feat_in, self.num_classes, kernel_size=1, bias=True))

    def forward(self, x):
        return self.decoder_layers(x)


class CTCModel(nn.Module):
    """What every float CTC recognizer here shares (ConvASR, ConformerCTC): a float front end
    `preprocessor.featurizer`, an `encoder` (mel, lengths) -> (features, lengths) and a `decoder`
    (1x1 conv to the classes). Subclasses build the three parts from a NeMo config."""

    @property
    def featurizer(self) -> MelFrontend:
        return self.preprocessor.featurizer

    def features(self, audio: torch.Tensor, lengths: torch.Tensor):
        """Waveform [B, N] -> normalized log-mel [B, F, T], frame lengths [B]."""
        return self.featurizer(audio, lengths)

    def forward_features(self, mel: torch.Tensor, lengths: torch.Tensor):
        """Log-mel -> logits [B, C, T'] and output lengths (the part that gets quantized)."""
        enc, enc_len = self.encoder(mel, lengths)
        return self.decoder(enc), enc_len

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor):
        mel, mel_len = self.features(audio, lengths)
        return self.forward_features(mel, mel_len)

    @staticmethod
    def log_probs(logits: torch.Tensor) -> torch.Tensor:
        """NeMo's decoder output: log-softmax over classes, [B, T, C]."""
        return torch.log_softmax(logits.transpose(1, 2), dim=-1)

    def batchnorms(self) -> list[tuple[str, nn.BatchNorm1d]]:
        return [(n, m) for n, m in self.encoder.named_modules() if isinstance(m, nn.BatchNorm1d)]


class ConvASR(CTCModel):
    """The whole CTC model: `preprocessor` (mel) -> `encoder` -> `decoder`, built from a NeMo config."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.labels = list(config.get("labels") or config["decoder"]["vocabulary"])
        self.preprocessor = nn.Module()
        self.preprocessor.featurizer = MelFrontend.from_config(config.get("preprocessor", {}))
        self.encoder = ConvASREncoder(**config["encoder"])
        self.decoder = ConvASRDecoder(**config["decoder"])
        if self.decoder.num_classes != len(self.labels) + 1:
            raise ValueError(f"decoder has {self.decoder.num_classes - 1} classes but {len(self.labels)} labels")
        self.eval()


# --------------------------------------------------------------------------- the one walk

@dataclass(frozen=True)
class ConvSite:
    """One convolution of a ConvASR, as every pass that quantizes, counts or exports it sees it.

    `bn` is the BatchNorm that normalizes this conv's output (folded into it by the converter);
    `act` is the activation right after that BatchNorm inside the block (ReLU or Hardtanh; None
    when the conv feeds another conv directly or is the block's last, whose activation is the
    block's `mout`, after the residual sum); `feeds_conv` says the next layer is a conv (the
    depthwise half of a separable pair)."""

    name: str                   # module path of the MaskedConv1d ("encoder.encoder.3.mconv.4"; decoder: "decoder.decoder_layers.0")
    block: int                  # block index; -1 for the decoder
    index: int                  # position in block.mconv (main path) or residual branch index
    role: str                   # "main", "residual" or "decoder"
    module: nn.Module           # the MaskedConv1d (main, residual) or the decoder's nn.Conv1d
    bn: nn.BatchNorm1d | None = None
    act: nn.Module | None = None
    feeds_conv: bool = False

    @property
    def conv(self) -> nn.Conv1d:
        return self.module.conv if isinstance(self.module, MaskedConv1d) else self.module

    @property
    def bn_name(self) -> str | None:
        """Module path of `bn` (it sits right after the conv in mconv, or second in a residual branch)."""
        if self.bn is None:
            return None
        if self.role == "main":
            return f"encoder.encoder.{self.block}.mconv.{self.index + 1}"
        return f"encoder.encoder.{self.block}.res.{self.index}.1"

    @property
    def kind(self) -> str:
        """depthwise / pointwise / dense on the main path; residual; decoder."""
        if self.role != "main":
            return self.role
        c = self.conv
        if c.groups > 1 and c.groups == c.in_channels:
            return "depthwise"
        return "pointwise" if c.kernel_size[0] == 1 else "dense"


@dataclass(frozen=True)
class BlockSites:
    """A Jasper block's convs in execution order: the main path, then one residual branch per
    (dense) block input; `dense` says the block's output is appended to its inputs."""

    index: int
    block: JasperBlock
    main: tuple[ConvSite, ...]
    residual: tuple[ConvSite, ...]
    dense: bool


@dataclass(frozen=True)
class ConvASRWalk:
    blocks: tuple[BlockSites, ...]
    decoder: ConvSite

    def sites(self) -> list[ConvSite]:
        """Every conv in execution order: each block's main path and residual branches, then the decoder."""
        return [s for b in self.blocks for s in (*b.main, *b.residual)] + [self.decoder]


def walk(model: "ConvASR") -> ConvASRWalk:
    """The ConvASR's structure, read once: the only place outside the model's own forward that
    knows the layout of `block.mconv` (module doc) and `block.res`. Calibration, conversion,
    learned rounding, mixed precision, equalization, BN restoration, the layer tables and the
    float runners are visitors of this walk."""
    blocks = []
    for b, block in enumerate(model.encoder.encoder):
        layers = list(block.mconv)
        main = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, MaskedConv1d):
                continue
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            bn = nxt if isinstance(nxt, nn.BatchNorm1d) else None
            j = i + 1 + (bn is not None)
            after = layers[j] if j < len(layers) else None
            main.append(ConvSite(f"encoder.encoder.{b}.mconv.{i}", b, i, "main", layer, bn,
                                 after if isinstance(after, (nn.ReLU, nn.Hardtanh)) else None,
                                 isinstance(nxt, MaskedConv1d)))
        residual = tuple(ConvSite(f"encoder.encoder.{b}.res.{r}.0", b, r, "residual", conv, bn)
                         for r, (conv, bn) in enumerate(block.res or []))
        blocks.append(BlockSites(b, block, tuple(main), residual, bool(block.dense)))
    dec = model.decoder.decoder_layers[0]
    return ConvASRWalk(tuple(blocks), ConvSite("decoder.decoder_layers.0", -1, 0, "decoder", dec))
