"""The one ONNX driver of the integer program: graph builder, op walk, sessions.

Both ONNX lowerings (``onnx_int``: integer operators, bit-exact; ``onnx_qdq``: Q/DQ around float
ops, TensorRT's explicit-quantization form) are a ``GraphLowering``: one method per op kind they
lower, named by the kind and listed in their ``LOWERS``; ``lower_ops`` walks the program in order.
What they share lives here too: the time masks and frame counts (``Lengths``), the image
reshapes of NeMo's Conv2d subsampling, the onnxruntime session (one per program and options)
and the input conversions of the uniform backend call.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

from .ops import OPS, Program

OPSET = 18


def onnx_modules():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover - onnx is a declared extra
        raise ImportError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from e
    return onnx, TensorProto, helper, numpy_helper


class Graph:
    """A tiny graph builder: unique names, initializers from NumPy arrays, one node per call."""

    def __init__(self):
        self.onnx, self.TP, self.helper, self.nh = onnx_modules()
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
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="intasr",
                         doc_string=doc)
        m.ir_version = 9  # readable by onnxruntime >= 1.16
        return m


class Lengths:
    """The masks and frame counts of a graph: one bool mask per lengths tensor (lazily, from the
    time dimension of the first tensor masked with it); ``frames`` in int64 arithmetic."""

    def __init__(self, g: Graph):
        self.g = g
        self._masks: dict = {}

    def mask(self, x: str, lengths: str, rank: int = 3) -> str:
        """bool [B, 1, T] (rank 4, images [B, C, T, F]: [B, 1, T, 1]): t < lengths[b], T = the
        time dimension (axis 2) of x."""
        if lengths not in self._masks:
            g = self.g
            T = g.op("Squeeze", [g.op("Shape", [x], "shape", start=2, end=3)], "T")
            r = g.op("Range", [g.const(0, np.int64, "zero"), T, g.const(1, np.int64, "one")], "t")
            lb = g.op("Unsqueeze", [lengths, g.const([1, 2], np.int64, "axes")], "len")
            self._masks[lengths] = g.op("Less", [r, lb], "mask")
        if rank == 3:
            return self._masks[lengths]
        if rank != 4:
            raise NotImplementedError(f"time masks of rank {rank}")
        if (lengths, 4) not in self._masks:
            g = self.g
            self._masks[(lengths, 4)] = g.op("Unsqueeze", [self._masks[lengths], g.const([3], np.int64, "axes")],
                                             "mask4")
        return self._masks[(lengths, 4)]

    def frames(self, lengths: str, attrs: dict) -> str:
        """(lengths + 2p - d(K-1) - 1) // s + 1, exact floor for lengths >= 0."""
        g = self.g
        c = 2 * attrs["padding"] - attrs["dilation"] * (attrs["kernel"] - 1) - 1
        s = int(attrs["stride"])
        shift = -(c // s) if c < 0 else 0          # c + s*shift >= 0: the numerator is nonnegative
        n = lengths
        if c + s * shift:
            n = g.op("Add", [n, g.const(c + s * shift, np.int64, "fc")], "fn")
        if s > 1:
            n = g.op("Div", [n, g.const(s, np.int64, "fs")], "fd")
        return g.op("Add", [n, g.const(1 - shift, np.int64, "f1")], "frames")


def to_image_nodes(g: Graph, x: str) -> str:
    """[B, F, T] -> [B, 1, T, F] (any dtype): Transpose, Unsqueeze."""
    return g.op("Unsqueeze", [g.op("Transpose", [x], "tf", perm=[0, 2, 1]), g.const([1], np.int64, "axes")], "image")


def flatten_freq_nodes(g: Graph, x: str) -> str:
    """[B, C, T, F] -> [B, C F, T], channel c F + f (any dtype): Transpose, Reshape."""
    shape = g.op("Concat", [g.op("Shape", [x], "bdim", start=0, end=1), g.const([-1], np.int64, "m1"),
                            g.op("Shape", [x], "tdim", start=2, end=3)], "fshape", axis=0)
    return g.op("Reshape", [g.op("Transpose", [x], "cft", perm=[0, 1, 3, 2]), shape], "flat")

class GraphLowering:
    """A program lowered to one ONNX graph: a subclass defines a method per op kind it lowers,
    named by the kind (fn(op, *inputs) -> the output's graph value), and calls ``lower_ops`` once.
    Its ``LOWERS`` is the set of those methods, read off the class."""

    LOWERS: frozenset = frozenset()
    NAME = "ONNX lowering"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.LOWERS = frozenset(k for k in OPS if callable(getattr(cls, k, None)))

    def __init__(self, program: Program):
        self.program = program
        self.g = Graph()
        self.lengths = Lengths(self.g)

    def before(self, op) -> None:
        """Called before each op is lowered (bookkeeping such as output ranks)."""

    def lower_ops(self, env: dict) -> dict:
        """env: {program input: graph value} -> env with every op's output."""
        for op in self.program.ops:
            if op.kind not in self.LOWERS:
                raise NotImplementedError(f"{self.NAME} has no kernel for op {op.kind!r}")
            self.before(op)
            env[op.outputs[0]] = getattr(self, op.kind)(op, *[env[i] for i in op.inputs])
        return env


def io_channels(p: Program):
    """(input features, output classes) for the graph's declared shapes (symbolic if unknown)."""
    convs = p.ops_of("conv1d")
    feats = "features"
    if convs and not p.ops_of("to_image"):   # an image front end (conv2d): the mel bins are free
        w = convs[0].params["weight"]
        feats = int(w.shape[1]) * int(convs[0].attrs["groups"])
    prod = p.producer()
    name, classes = p.outputs[0], "classes"
    while name in prod:
        op = prod[name]
        if op.kind == "conv1d":
            classes = int(op.params["weight"].shape[0])
            break
        name = op.inputs[0]
    return feats, classes


def program_and_labels(model) -> tuple[Program, list | None]:
    if isinstance(model, Program):
        return model, None
    if hasattr(model, "program"):
        return model.program, getattr(model, "labels", None)
    raise TypeError(f"expected a Program or an IntegerModel, got {type(model).__name__}")


# --------------------------------------------------------------------------- files and onnxruntime

def save_model(model, path) -> Path:
    """Check and write an ONNX ModelProto atomically."""
    onnx = onnx_modules()[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover
        raise ImportError("onnxruntime is not installed: pip install onnxruntime") from e
    return ort


def make_session(model, threads: int | None = None):
    """An onnxruntime CPU InferenceSession from a path or a ModelProto; ``threads`` intra-op
    threads (None: onnxruntime's default), one inter-op thread, sequential execution."""
    ort = _ort()
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def as_numpy(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def full_lengths(x, lengths) -> np.ndarray:
    """lengths as int64 [B]; None means every frame of every item is valid."""
    B, T = int(x.shape[0]), int(x.shape[-1])
    if lengths is None:
        return np.full((B,), T, dtype=np.int64)
    out = as_numpy(lengths, np.int64).reshape(-1)
    if out.shape != (B,):
        raise ValueError(f"lengths must have one entry per batch item: {out.shape} for batch {B}")
    return out


_SESSIONS: dict = {}


def cached_session(program: Program, key: tuple, build):
    """One session per (program object, options); dropped when the program is garbage collected."""
    k = (id(program),) + key
    if k not in _SESSIONS:
        _SESSIONS[k] = build()
        weakref.finalize(program, _SESSIONS.pop, k, None)
    return _SESSIONS[k]
