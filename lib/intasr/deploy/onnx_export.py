"""ONNX export, as the ``intasr export`` command (``cli/deploy.py``) runs it.

The float model's FP32 graph is ``onnx_float.py`` (``export_onnx_float``, re-exported here).

The integer model's graphs are lowerings of its integer program (no model walking):
``program/onnx_int.py`` (``export_onnx``: the integer-only graph, bit-exact to ``forward_int``
with padding masks, inputs ``q`` and ``lengths``) and ``program/onnx_qdq.py`` (``export_onnx_qdq``:
QuantizeLinear/DequantizeLinear + float Conv, TensorRT's explicit-quantization form).
``intasr export`` writes both.
"""

from __future__ import annotations

from .onnx_float import build_float_model, export_onnx_float  # noqa: F401  (re-exported)

