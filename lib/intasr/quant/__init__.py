"""Quantization, float side: quantizers, observers, BN folding, dyadic requantization.

Quantized values are carried explicitly as (integer tensor, scale) (:class:`QTensor`).
"""
from .quantizer import (MIN_ALPHA, QTensor, dequantize, fake_quantize, qrange, quantize,
                        scale_from_range, storage_dtype, weight_alpha)
from .observers import (EMAMinMaxObserver, MinMaxObserver, Observer, PercentileObserver,
                        make_observer)
from .dyadic import (MAX_SHIFT, dyadic_from_float, dyadic_value, requant_fits_int64, requantize,
                     rescale)
from .bn import BNParams, bn_from_stats, fold_batchnorm, unfold_batchnorm

__all__ = [
    "MIN_ALPHA", "QTensor", "dequantize", "fake_quantize", "qrange", "quantize",
    "scale_from_range", "storage_dtype", "weight_alpha",
    "EMAMinMaxObserver", "MinMaxObserver", "Observer", "PercentileObserver", "make_observer",
    "MAX_SHIFT", "dyadic_from_float", "dyadic_value", "requant_fits_int64", "requantize", "rescale",
    "BNParams", "bn_from_stats", "fold_batchnorm", "unfold_batchnorm",
]
