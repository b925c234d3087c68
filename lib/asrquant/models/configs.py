"""NeMo-format model configs for the architectures the paper uses.

These are the `model_config.yaml` dicts NeMo itself writes for QuartzNet 5x5/10x5/15x5
(examples/asr/conf/quartznet/quartznet_15x5.yaml) and JasperDR 10x5 (jasper_10x5dr.yaml),
reduced to what inference needs. `EncDecCTCModel(cfg)` in NeMo and `ConvASR(cfg)` here both
build the same network from them.
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


def _block(filters, repeat, kernel, stride=1, dilation=1, residual=True, separable=True, dense=False):
    d = {"filters": filters, "repeat": repeat, "kernel": [kernel], "stride": [stride],
         "dilation": [dilation], "dropout": 0.0, "residual": residual, "separable": separable}
    if dense:
        d["residual_dense"] = True
    return d


def _model(jasper: list[dict], feat_out: int) -> dict:
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
    jasper = [_block(256, 1, 33, stride=2, residual=False)]
    for filters, kernel in [(256, 33), (256, 39), (512, 51), (512, 63), (512, 75)]:
        jasper += [_block(filters, 5, kernel) for _ in range(per_stage)]
    jasper += [_block(512, 1, 87, dilation=2, residual=False),
               _block(1024, 1, 1, residual=False, separable=False)]
    return _model(jasper, 1024)


def jasper_dr_config() -> dict:
    """JasperDR 10x5: dense residual, not separable."""
    jasper = [_block(256, 1, 11, stride=2, residual=False, separable=False)]
    for filters, kernel in [(256, 11), (384, 13), (512, 17), (640, 21), (768, 25)]:
        jasper += [_block(filters, 5, kernel, separable=False, dense=True) for _ in range(2)]
    jasper += [_block(896, 1, 29, dilation=2, residual=False, separable=False),
               _block(1024, 1, 1, residual=False, separable=False)]
    return _model(jasper, 1024)


ARCHITECTURES = {
    "quartznet5x5": lambda: quartznet_config(5),
    "quartznet10x5": lambda: quartznet_config(10),
    "quartznet15x5": lambda: quartznet_config(15),
    "jasperdr10x5": jasper_dr_config,
}


def config_for(name: str) -> dict:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return copy.deepcopy(ARCHITECTURES[key]())
