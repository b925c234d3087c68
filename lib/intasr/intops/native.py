"""Fused integer CPU kernels in C (``native_kernels.c``), compiled on first use and called through
ctypes on torch tensors' memory.

Why: the integer runner's time went to what PyTorch and onnxruntime do not fuse. Requantization
as separate torch ops (cast to int64, multiply, add, shift, clamp, cast to int8) walks every
activation six times, about as long as all pointwise convs; and no library here has a fast integer
*depthwise* conv. The two kernels here do each in one pass:

* ``dw_conv_requant``: depthwise conv (int8 x int8 -> int32) fused with the requantization.
* ``requant_sum``: requantize one or more int32 accumulators (main branch + residuals), add,
  clamp, store int8 (or int64 logits).

Both are the exact integer arithmetic of ``IntegerModel.forward_int`` (tests/test_native.py
checks them against NumPy and the runner against ``forward_int``). The shared library is built
with the system C compiler (``$CC``, default ``cc``; flags ``-O3 -march=native -fopenmp``) into
``$INTASR_NATIVE_CACHE`` (default ``~/.cache/intasr``), keyed by the source, the flags and the
CPU's features (``intasr.cpu``, CPUID as this process sees it), and written atomically;
``available()`` says whether that works here.

``-march=native`` is what the *compiler* sees, and the compiler is another process: under
``qemu-x86_64 -cpu max`` (an AVX2 CPU without AVX-512) the compiler runs natively on the host, so
on an AVX-512 host it would emit AVX-512 code that the emulated CPU cannot run. Every x86 feature
the probe says this process lacks is therefore also switched off (``-mno-avx512f``, ...:
``target_flags()``), which changes nothing where compiler and process see the same CPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["available", "library_path", "target_flags", "dw_conv_requant", "requant_sum", "NativeBuildError"]

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99"]


class NativeBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded on this machine."""


# the probe's features (intasr.cpu.CpuFeatures) -> the GCC/Clang option that switches one off
_NO_FLAG = {"sse41": "-mno-sse4.1", "avx2": "-mno-avx2", "fma": "-mno-fma", "avx512f": "-mno-avx512f",
            "avx512bw": "-mno-avx512bw", "avx512vnni": "-mno-avx512vnni", "avxvnni": "-mno-avxvnni",
            "amx_int8": "-mno-amx-int8"}


def _features():
    from ..cpu import cpu_features

    return cpu_features()


def _cpu_key() -> str:
    """This process's CPU in the cache key: the probe's features (not /proc/cpuinfo, which shows the
    host's CPU to an emulated process too)."""
    f = _features()
    return f"{f.arch} {f.vendor} {f.model} {' '.join(f.flags())}"


def target_flags() -> list[str]:
    """``-mno-...`` for every x86 feature this process's CPU lacks (none off x86)."""
    f = _features()
    if f.arch not in ("x86_64", "amd64") or f.source == "none":
        return []
    return [flag for name, flag in _NO_FLAG.items() if not getattr(f, name)]


def _accepted(cc: str, flags: list[str]) -> list[str]:
    """The flags this compiler knows (an older one lacks e.g. -mno-avxvnni: nothing to switch off)."""
    def ok(fl):
        r = subprocess.run([cc, *fl, "-x", "c", "-c", os.devnull, "-o", os.devnull], capture_output=True)
        return r.returncode == 0

    if not flags or ok(flags):
        return flags
    return [fl for fl in flags if ok([fl])]


def _cache_dir() -> Path:
    from ..paths import native_cache

    return native_cache()


def library_path() -> Path:
    """Where the compiled library for this source, these flags and this CPU lives (or will)."""
    cc = os.environ.get("CC", "cc")
    what = " ".join([cc, *FLAGS, *target_flags(), _cpu_key()])
    key = hashlib.sha256(SOURCE.read_bytes() + what.encode()).hexdigest()[:16]
    return _cache_dir() / f"intasr_native_{key}.so"


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        cc = os.environ.get("CC", "cc")
        if shutil.which(cc) is None:
            raise NativeBuildError(f"no C compiler {cc!r} on PATH: the native integer kernels need one "
                                   "(set $CC, or use the onnxruntime integer runner)")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            flags = [*FLAGS, *_accepted(cc, target_flags())]
            r = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
            if r.returncode:
                raise NativeBuildError(f"compiling {SOURCE} failed ({cc} {' '.join(flags)}):\n{r.stderr.strip()}")
            os.replace(tmp, path)  # atomic: a concurrent build or a crash never leaves half a library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeBuildError(f"cannot load {path}: {e}") from e
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.dw_conv_requant.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, i64, i64, i64, i64,
                                    ptr, ptr, ptr, i64, i64, i64, ptr, cint]
    lib.dw_conv_requant.restype = cint
    lib.requant_sum.argtypes = [i64, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, ptr, ptr, cint]
    lib.requant_sum.restype = cint
    return lib


def available() -> bool:
    """True iff the kernels compile and load here (compiles on the first call)."""
    try:
        _lib()
        return True
    except NativeBuildError:
        return False


def _check(t: torch.Tensor, name: str, dtype: torch.dtype, dim: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != dim:
        raise TypeError(f"{name} must be a {dim}-d {dtype} tensor, got "
                        f"{getattr(t, 'dtype', type(t))} with shape {tuple(getattr(t, 'shape', ()))}")
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU tensor")


def _channel_params(C: int, M, Cst, S) -> tuple[torch.Tensor, ...]:
    out = []
    for name, t in (("M", M), ("C", Cst), ("S", S)):
        t = t.reshape(-1)
        if t.dtype != torch.int64 or t.numel() != C:
            raise ValueError(f"{name} must hold {C} int64 values (one per channel), got {t.numel()} {t.dtype}")
        out.append(t.contiguous())
    if int(out[2].min()) < 0 or int(out[2].max()) > 62:
        raise ValueError("shifts S must be in 0..62")
    return tuple(out)


def dw_conv_requant(x: torch.Tensor, w: torch.Tensor, M, Cst, S, *, stride: int = 1, padding: int = 0,
                    dilation: int = 1, zp: int = 0, post: int = 0, lo: int = -128, hi: int = 127,
                    threads: int = 1) -> torch.Tensor:
    """Depthwise conv + requantization, int8 [B, C, T] -> int8 [B, C, T_out] (native_kernels.c).

    The real input is y = x - zp (zero padding in y); acc[c, t] = sum_k w[c, k] y[c, t*stride +
    k*dilation - padding] in int32; out = clamp(((acc * M[c] + Cst[c]) >> S[c]) + post, lo, hi).
    The caller guarantees sum_k |w[c, k]| * max|y| < 2^31 and |acc * M + Cst| < 2^63."""
    _check(x, "x", torch.int8, 3)
    _check(w, "w", torch.int8, 2)
    B, C, T = x.shape
    if w.shape[0] != C:
        raise ValueError(f"w has {w.shape[0]} channels, x has {C}")
    if not (-128 <= lo <= hi <= 127):
        raise ValueError("the clamp range must lie in int8")
    K = w.shape[1]
    if stride < 1 or dilation < 1 or padding < 0:
        raise ValueError("stride and dilation must be >= 1 and padding >= 0")
    T_out = (T + 2 * padding - dilation * (K - 1) - 1) // stride + 1
    if T_out < 1:
        raise ValueError("input too short for this kernel")
    M, Cst, S = _channel_params(C, M, Cst, S)
    out = torch.empty((B, C, T_out), dtype=torch.int8)
    rc = _lib().dw_conv_requant(x.data_ptr(), B, C, T, int(zp), w.data_ptr(), K, stride, padding, dilation, T_out,
                                M.data_ptr(), Cst.data_ptr(), S.data_ptr(), int(post), int(lo), int(hi),
                                out.data_ptr(), int(threads))
    if rc:
        raise MemoryError("dw_conv_requant: out of memory for scratch rows")
    return out


def requant_sum(terms, *, post: int = 0, lo: int = -128, hi: int = 127, out_dtype: torch.dtype = torch.int8,
                threads: int = 1) -> torch.Tensor:
    """sum_j ((acc_j * M_j + C_j) >> S_j) + post, then clamp to [lo, hi] and store int8; or, with
    out_dtype=torch.int64, no clamp (logits). terms: [(acc int32 [B, C, T], M, C, S), ...]."""
    if not terms:
        raise ValueError("requant_sum needs at least one term")
    if out_dtype not in (torch.int8, torch.int64):
        raise ValueError("out_dtype must be torch.int8 or torch.int64")
    shape = terms[0][0].shape
    keep = []
    for j, (acc, M, Cst, S) in enumerate(terms):
        _check(acc, f"acc[{j}]", torch.int32, 3)
        if acc.shape != shape:
            raise ValueError(f"acc[{j}] has shape {tuple(acc.shape)}, acc[0] {tuple(shape)}")
        keep.append((acc, *_channel_params(shape[1], M, Cst, S)))
    B, C, T = shape
    arr = lambda i: (ctypes.c_void_p * len(keep))(*[k[i].data_ptr() for k in keep])  # noqa: E731
    out = torch.empty(shape, dtype=out_dtype)
    o8, o64 = (out.data_ptr(), None) if out_dtype == torch.int8 else (None, out.data_ptr())
    rc = _lib().requant_sum(len(keep), arr(0), arr(1), arr(2), arr(3), B, C, T, int(post), int(lo), int(hi),
                            o8, o64, int(threads))
    if rc:
        raise MemoryError("requant_sum: out of memory for scratch rows")
    return out
