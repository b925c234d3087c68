"""NeMo-format model configs for the architectures the paper uses.

These are the `model_config.yaml` dicts NeMo itself writes for QuartzNet 5x5/10x5/15x5
(examples/asr/conf/quartznet/quartznet_15x5.yaml), JasperDR 10x5 (jasper_10x5dr.yaml) and
Conformer-CTC small/medium/large (examples/asr/conf/conformer/conformer_ctc_bpe.yaml), reduced
to what inference needs. `EncDecCTCModel(cfg)` in NeMo and `ConvASR(cfg)` / `ConformerCTC(cfg)`
here build the same network from them (`build_model` picks the class from the encoder target).
"""

from __future__ import annotations

import copy

from ..text import EN_CHARS

NEMO_CTC_TARGET = "nemo.collections.asr.models.ctc_models.EncDecCTCModel"


def preprocessor_config(features: int = 64, window_size: float = 0.02, pad_to: int = 16) -> dict:
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "normalize": "per_feature", "window_size": window_size, "sample_rate": 16000,
        "window_stride": 0.01, "window": "hann", "features": features, "n_fft": 512,
        "frame_splicing": 1, "dither": 1e-5, "pad_to": pad_to,
    }


def block_config(filters, repeat, kernel, stride=1, dilation=1, residual=True, separable=True, dense=False):
    """One entry of NeMo's ``encoder.jasper`` list (a ConvASR block), for small test and seed models."""
    d = {"filters": filters, "repeat": repeat, "kernel": [kernel], "stride": [stride],
         "dilation": [dilation], "dropout": 0.0, "residual": residual, "separable": separable}
    if dense:
        d["residual_dense"] = True
    return d


def convasr_config(jasper: list[dict], feat_out: int) -> dict:
    """A whole NeMo ConvASR (EncDecCTCModel) config from its blocks (``block_config``), English characters."""
    labels = list(EN_CHARS)
    return {
        "target": NEMO_CTC_TARGET,
        "sample_rate": 16000,
        "labels": labels,
        "preprocessor": preprocessor_config(),
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 64,
                    "activation": "relu", "conv_mask": True, "jasper": jasper},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": feat_out,
                    "num_classes": len(labels), "vocabulary": labels},
    }


def quartznet_config(blocks: int = 15) -> dict:
    """QuartzNet Bx5: B in {5, 10, 15}; each of the 5 stages has B/5 blocks of 5 sub-blocks."""
    if blocks not in (5, 10, 15):
        raise ValueError(f"QuartzNet has 5, 10 or 15 blocks, not {blocks}")
    per_stage = blocks // 5
    jasper = [block_config(256, 1, 33, stride=2, residual=False)]
    for filters, kernel in [(256, 33), (256, 39), (512, 51), (512, 63), (512, 75)]:
        jasper += [block_config(filters, 5, kernel) for _ in range(per_stage)]
    jasper += [block_config(512, 1, 87, dilation=2, residual=False),
               block_config(1024, 1, 1, residual=False, separable=False)]
    return convasr_config(jasper, 1024)


def jasper_dr_config() -> dict:
    """JasperDR 10x5: dense residual, not separable."""
    jasper = [block_config(256, 1, 11, stride=2, residual=False, separable=False)]
    for filters, kernel in [(256, 11), (384, 13), (512, 17), (640, 21), (768, 25)]:
        jasper += [block_config(filters, 5, kernel, separable=False, dense=True) for _ in range(2)]
    jasper += [block_config(896, 1, 29, dilation=2, residual=False, separable=False),
               block_config(1024, 1, 1, residual=False, separable=False)]
    return convasr_config(jasper, 1024)


# ---------------------------------------------------------------------------------------------
# Conformer-CTC
# ---------------------------------------------------------------------------------------------

NEMO_CTC_BPE_TARGET = "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE"

# NeMo examples/asr/conf/conformer/conformer_ctc_bpe.yaml (and conformer_ctc_char.yaml), header
# table of "recommended configs for different variants of Conformer-CTC, other parameters are the
# same as in this config file":
#   Small (13M): d_model 176, n_heads 4, n_layers 16; Medium (30M): 256, 4, 18;
#   Large (121M): 512, 8, 18.
# The large LibriSpeech checkpoint of that recipe is NGC's stt_en_conformer_ctc_large_ls (the
# paper's Conformer-Large row), BPE (SentencePiece) with 128 tokens.
CONFORMER_SIZES = {
    "small": {"d_model": 176, "n_heads": 4, "n_layers": 16},
    "medium": {"d_model": 256, "n_heads": 4, "n_layers": 18},
    "large": {"d_model": 512, "n_heads": 8, "n_layers": 18},
}


def conformer_encoder_config(d_model: int, n_layers: int, n_heads: int, feat_in: int = 80, **overrides) -> dict:
    """The `encoder` section of conformer_ctc_bpe.yaml (inference-relevant keys and the dropouts)."""
    enc = {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": feat_in, "feat_out": -1, "n_layers": n_layers, "d_model": d_model,
        "subsampling": "striding", "subsampling_factor": 4, "subsampling_conv_channels": -1,
        "causal_downsampling": False, "ff_expansion_factor": 4,
        "self_attention_model": "rel_pos", "n_heads": n_heads, "att_context_size": [-1, -1],
        "att_context_style": "regular", "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
        "conv_kernel_size": 31, "conv_norm_type": "batch_norm", "conv_context_size": None,
        "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        "stochastic_depth_drop_prob": 0.0, "stochastic_depth_mode": "linear", "stochastic_depth_start_layer": 1,
    }
    enc.update(overrides)
    return enc


def conformer_ctc_config(size: str = "large", vocabulary: list[str] | None = None, bpe: bool = True,
                         vocab_size: int = 128, **encoder_overrides) -> dict:
    """NeMo model_config.yaml layout for Conformer-CTC small / medium / large.

    vocabulary: the CTC labels without the blank (BPE: the tokenizer's pieces in id order; char:
    the characters). None: BPE gets `vocab_size` placeholder pieces (a random-weight model needs
    only the count; a real tokenizer replaces them when a .nemo is loaded), char gets English chars.
    bpe: writes NeMo's EncDecCTCModelBPE target and a `tokenizer` section (type bpe; model_path
    stays None until `save_model` stores a tokenizer.model in the archive and points it there with
    NeMo's `nemo:` prefix) instead of the char model's `labels`.
    encoder_overrides: any ConformerEncoder option, e.g. subsampling="dw_striding", xscaling=False,
    n_layers=2 (a shallow model for tests).
    """
    key = size.lower()
    if key not in CONFORMER_SIZES:
        raise ValueError(f"unknown Conformer size {size!r}; known: {sorted(CONFORMER_SIZES)}")
    if vocabulary is None:
        vocabulary = [f"<{i}>" for i in range(vocab_size)] if bpe else list(EN_CHARS)
    vocabulary = list(vocabulary)
    enc = conformer_encoder_config(**{**CONFORMER_SIZES[key], **encoder_overrides})
    d_out = enc["feat_out"] if int(enc.get("feat_out", -1)) > 0 else enc["d_model"]
    cfg = {
        "target": NEMO_CTC_BPE_TARGET if bpe else NEMO_CTC_TARGET,
        "sample_rate": 16000,
    }
    if bpe:  # save_model points model_path at the archive's tokenizer.model when the model has one
        cfg["tokenizer"] = {"dir": None, "type": "bpe", "model_path": None}
    else:
        cfg["labels"] = vocabulary
    cfg.update({
        "preprocessor": preprocessor_config(features=enc["feat_in"], window_size=0.025, pad_to=0),
        "encoder": enc,
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": d_out,
                    "num_classes": len(vocabulary), "vocabulary": vocabulary},
    })
    return cfg


ARCHITECTURES = {
    "quartznet5x5": lambda: quartznet_config(5),
    "quartznet10x5": lambda: quartznet_config(10),
    "quartznet15x5": lambda: quartznet_config(15),
    "jasperdr10x5": jasper_dr_config,
}
for _size in CONFORMER_SIZES:  # "conformer_ctc_large", "conformer-large", ... all work
    ARCHITECTURES[f"conformerctc{_size}"] = ARCHITECTURES[f"conformer{_size}"] = (
        lambda s: lambda: conformer_ctc_config(s))(_size)


def config_for(name: str) -> dict:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return copy.deepcopy(ARCHITECTURES[key]())
