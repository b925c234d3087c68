"""Float model + calibration batches -> integer model, whatever the architecture.

The one entry point the command line and the experiment grid use: it calibrates (one pass
over the batches) and converts with the converter of the model's kind: ``convert`` for ConvASR
(QuartzNet, JasperDR), ``convert_conformer`` for Conformer-CTC.
"""

from __future__ import annotations

from .models.convasr import ConvASR


def is_conformer(model) -> bool:
    from .models.conformer import ConformerCTC

    return isinstance(model, ConformerCTC)


def quantize(model, batches, weight_bits: int = 8, act_bits: int = 8, *, observer: str = "minmax",
             weight_method: str = "minmax", bias_correction: bool = False, rounding: str = "nearest",
             depthwise_bits: int | None = None, residual_bits: int | None = None, prob_bits: int | None = None,
             info: dict | None = None):
    """Calibrate `model` on (mel, lengths) batches and convert it to an integer model."""
    if is_conformer(model):
        from .convert_conformer import calibrate_conformer, convert_conformer

        unsupported = [flag for flag, on in (("--bias-correction", bias_correction), ("--rounding gptq",
                       rounding != "nearest"), ("--depthwise-bits", bool(depthwise_bits))) if on]
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)}: supported for ConvASR models only, not the Conformer")
        observers = calibrate_conformer(model, batches, observer)
        return convert_conformer(model, observers, weight_bits, act_bits, weight_method, info, residual_bits,
                                 prob_bits=prob_bits)
    if not isinstance(model, ConvASR):
        raise TypeError(f"cannot quantize a {type(model).__name__}")
    if residual_bits or prob_bits:
        raise ValueError("--residual-bits / --prob-bits: supported for the Conformer only")
    from .calibration import collect
    from .convert import convert

    stats = collect(model, batches, means=bias_correction, hessians=rounding == "gptq", observer=observer)
    return convert(model, stats.observers, weight_bits, act_bits, weight_method, info, input_means=stats.input_means,
                   depthwise_bits=depthwise_bits, hessians=stats.hessians)
