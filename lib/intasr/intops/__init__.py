"""Integer-only kernels (torch, integer dtypes only). Scales are handled by the caller.

``reference`` is an independent NumPy implementation of the same ops, for bit-exactness tests.
"""
from .conv import accumulator_bound, choose_acc_dtype, int_add, int_conv1d, int_relu, mask_time

__all__ = ["accumulator_bound", "choose_acc_dtype", "int_add", "int_conv1d", "int_relu", "mask_time"]
