"""The integer program (op set and exact semantics, ``ops``) and the backends that lower it.

Backends, one file each, none of which knows the model the program came from; each declares the
op kinds it lowers (``LOWERS``), and ``backends`` registers and runs them all the same way:
  torch_ref   the reference (``IntegerModel.forward_int``)
  numpy_ref   an independent NumPy replay (bit-exactness proofs)
  onnx_int    the integer-only ONNX graph (onnxruntime integer operators)
  onnx_qdq    the ONNX Q/DQ form (simulated quantization, TensorRT's explicit-quantization input)
              (both ONNX lowerings are driven by ``onnx_graph.GraphLowering``)
  fast        the fast CPU runner (torch._int_mm and the fused C kernels of intops/native)
  c_backend   the generated C runtime (``c_lower``: what it lowers and how)
"""

from .ops import OPS, Op, Program, ProgramError, Value

__all__ = ["OPS", "Op", "Program", "ProgramError", "Value"]
