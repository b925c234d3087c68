"""A tiny ONNX graph builder shared by the integer lowerings (onnx_int, onnx_nonlinear).

Its own module so that the program's ONNX lowerings can use it without importing each other.
"""

from __future__ import annotations

import numpy as np

OPSET = 18


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover - onnx is a declared extra
        raise ImportError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from e
    return onnx, TensorProto, helper, numpy_helper


class Graph:
    """A tiny graph builder: unique names, initializers from NumPy arrays, one node per call."""

    def __init__(self):
        self.onnx, self.TP, self.helper, self.nh = _onnx()
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, dtype, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(self.nh.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def identity(self, x: str, out: str) -> str:
        self.nodes.append(self.helper.make_node("Identity", [x], [out], name=out))
        return out

    def model(self, inputs, outputs, name: str, doc: str = ""):
        h = self.helper
        graph = h.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="asrquant",
                         doc_string=doc)
        m.ir_version = 9  # readable by onnxruntime >= 1.16
        return m


