"""What this CPU can do, read from the CPUID instruction itself: the one CPU-feature probe.

Every runtime choice (which integer kernels the C runtime runs, whether onnxruntime's integer
kernels are exact), every skip and every provenance record reads ``cpu_features()``.
/proc/cpuinfo is not used unless CPUID cannot be executed: it describes the host, not an emulated
or masked CPU (``qemu-x86_64 -cpu max`` reports AVX2 without AVX-512 to CPUID; /proc/cpuinfo
still shows the host's AVX-512).

How: a 27-byte x86-64 routine (CPUID, and XGETBV for the register state the OS saves) is copied
into an executable anonymous mapping and called through ctypes (System V calling convention:
Linux, macOS). A feature counts only when the CPU has it *and* the OS saves its registers
(XCR0): AVX needs the YMM state, AVX-512 the opmask and ZMM states, as the Intel SDM's
"detection of AVX-512" procedure asks.

Kernel families (the C runtime's, ``program/c``), best first:
  avx512-vnni   AVX-512 F + BW + VNNI: vpdpbusd on zmm, 64 u8 x s8 multiply-adds per instruction
  avx-vnni      AVX-VNNI (VEX vpdpbusd on ymm): 32 per instruction
  avx2          AVX2 without VNNI: int16 vpmaddwd, 16 per instruction, exact (no int16 saturation)
  portable      plain C (any CPU)
``ASRQ_ISA`` (one of these names) forces a family for the C runtime, e.g. to time the AVX2
kernels on an AVX-512 machine; ``kernel_family()`` refuses a family this CPU cannot run.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CpuFeatures", "cpu_features", "kernel_family", "FAMILIES", "ISA_ENV", "LINUX_NAMES"]

FAMILIES = ("avx512-vnni", "avx-vnni", "avx2", "portable")
ISA_ENV = "ASRQ_ISA"

# uint32 out[4] = cpuid(eax = leaf, ecx = subleaf):  void f(uint32 leaf, uint32 subleaf, uint32 *out)
_CPUID = bytes([0x53,                          # push rbx (callee-saved, CPUID writes it)
                0x49, 0x89, 0xD0,              # mov r8, rdx
                0x89, 0xF8,                    # mov eax, edi
                0x89, 0xF1,                    # mov ecx, esi
                0x0F, 0xA2,                    # cpuid
                0x41, 0x89, 0x00,              # mov [r8], eax
                0x41, 0x89, 0x58, 0x04,        # mov [r8 + 4], ebx
                0x41, 0x89, 0x48, 0x08,        # mov [r8 + 8], ecx
                0x41, 0x89, 0x50, 0x0C,        # mov [r8 + 12], edx
                0x5B,                          # pop rbx
                0xC3])                         # ret
# uint64 f(uint32 index) = XCR[index]  (only called when CPUID says OSXSAVE)
_XGETBV = bytes([0x89, 0xF9,                   # mov ecx, edi
                 0x0F, 0x01, 0xD0,             # xgetbv
                 0x48, 0xC1, 0xE2, 0x20,       # shl rdx, 32
                 0x48, 0x09, 0xD0,             # or rax, rdx
                 0xC3])                        # ret


# CpuFeatures' boolean fields -> the flag /proc/cpuinfo names them by (its fallback reads these)
LINUX_NAMES = {"sse41": "sse4_1", "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
               "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "amx_int8": "amx_int8"}


@dataclass(frozen=True)
class CpuFeatures:
    """The features the project's runtimes care about, as this process's CPU reports them."""

    arch: str
    vendor: str
    model: str
    source: str            # "cpuid", "/proc/cpuinfo" (CPUID could not be run) or "none"
    sse41: bool = False
    avx2: bool = False
    fma: bool = False
    avx512f: bool = False
    avx512bw: bool = False
    avx512vnni: bool = False
    avxvnni: bool = False
    amx_int8: bool = False

    @property
    def vnni(self) -> bool:
        """u8 x s8 dot products accumulated in int32 without saturation (AVX-512 VNNI or AVX-VNNI)."""
        return (self.avx512vnni and self.avx512bw) or self.avxvnni

    @property
    def best_family(self) -> str:
        return next(f for f in FAMILIES if supports(self, f))

    def flags(self) -> list[str]:
        return [k for k, v in asdict(self).items() if v is True]

    def linux_flags(self) -> list[str]:
        """The features this CPU has, spelled as Linux's /proc/cpuinfo spells them (avx512_vnni,
        avx_vnni, sse4_1, ...): the names older bench JSON files recorded, sorted."""
        return sorted(LINUX_NAMES[k] for k in self.flags())

    def as_dict(self) -> dict:
        """JSON-able: what provenance and bench records store."""
        d = asdict(self)
        d["vnni"] = self.vnni
        d["kernel_family"] = self.best_family
        return d


def supports(f: CpuFeatures, family: str) -> bool:
    if family == "portable":
        return True
    if family == "avx2":
        return f.avx2
    if family == "avx-vnni":
        return f.avx2 and f.avxvnni
    if family == "avx512-vnni":
        return f.avx512f and f.avx512bw and f.avx512vnni
    raise ValueError(f"unknown kernel family {family!r}; choose from {', '.join(FAMILIES)}")


def _call_code(code: bytes, restype, argtypes):
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fn = ctypes.CFUNCTYPE(restype, *argtypes)(addr)
    return fn, buf   # keep buf alive as long as fn


def _bit(v: int, b: int) -> bool:
    return bool((v >> b) & 1)


def _from_cpuid(arch: str) -> CpuFeatures:
    cpuid_fn, _keep = _call_code(_CPUID, None, [ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)])

    def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint32 * 4)()
        cpuid_fn(leaf, sub, out)
        return out[0], out[1], out[2], out[3]

    max_leaf, b, c, d = cpuid(0)
    vendor = b"".join(v.to_bytes(4, "little") for v in (b, d, c)).decode("ascii", "replace")
    _, _, c1, d1 = cpuid(1) if max_leaf >= 1 else (0, 0, 0, 0)
    b7, c7, d7 = cpuid(7, 0)[1:] if max_leaf >= 7 else (0, 0, 0)
    a71 = cpuid(7, 1)[0] if max_leaf >= 7 else 0
    xcr0 = 0
    if _bit(c1, 27):   # OSXSAVE: XGETBV is allowed
        xgetbv, _keep2 = _call_code(_XGETBV, ctypes.c_uint64, [ctypes.c_uint32])
        xcr0 = xgetbv(0)
    os_avx = (xcr0 & 0x6) == 0x6              # XMM and YMM state
    os_avx512 = os_avx and (xcr0 & 0xE0) == 0xE0   # opmask, ZMM_Hi256, Hi16_ZMM
    os_amx = (xcr0 & 0x60000) == 0x60000      # TILECFG, TILEDATA
    model = ""
    if cpuid(0x80000000)[0] >= 0x80000004:
        raw = b"".join(v.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004) for v in cpuid(leaf))
        model = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    avx = _bit(c1, 28) and os_avx
    return CpuFeatures(
        arch=arch, vendor=vendor, model=model, source="cpuid",
        sse41=_bit(c1, 19), avx2=avx and _bit(b7, 5), fma=avx and _bit(c1, 12),
        avx512f=os_avx512 and _bit(b7, 16), avx512bw=os_avx512 and _bit(b7, 30),
        avx512vnni=os_avx512 and _bit(c7, 11), avxvnni=avx and _bit(a71, 4),
        amx_int8=os_amx and _bit(d7, 25))


def _from_proc_cpuinfo(arch: str) -> CpuFeatures:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuFeatures(arch=arch, vendor="", model=platform.processor(), source="none")
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in text.splitlines()  # noqa: E731
                              if ln.split(":", 1)[0].strip() == key), "")
    flags = set(field("flags").split())
    return CpuFeatures(arch=arch, vendor=field("vendor_id"), model=field("model name"), source="/proc/cpuinfo",
                       **{name: linux in flags for name, linux in LINUX_NAMES.items()})


@functools.lru_cache(maxsize=None)
def cpu_features() -> CpuFeatures:
    """This CPU's features (cached for the process)."""
    arch = platform.machine().lower()
    if arch not in ("x86_64", "amd64"):
        return CpuFeatures(arch=arch, vendor="", model=platform.processor(), source="none")
    try:
        return _from_cpuid(arch)
    except (OSError, ValueError, AttributeError):   # no executable mapping allowed here (W^X policy)
        return _from_proc_cpuinfo(arch)


def kernel_family(requested: str | None = None) -> str:
    """The C runtime's kernel family for this process: `requested`, else $ASRQ_ISA, else the best
    this CPU runs. ValueError for an unknown name or one this CPU cannot run."""
    name = requested or os.environ.get(ISA_ENV) or None
    f = cpu_features()
    if name is None:
        return f.best_family
    if name not in FAMILIES:
        raise ValueError(f"{ISA_ENV}={name!r}: unknown kernel family; choose from {', '.join(FAMILIES)}")
    if not supports(f, name):
        raise ValueError(f"{ISA_ENV}={name}: this CPU ({f.model or f.arch}) cannot run the {name} kernels "
                         f"(it runs {', '.join(x for x in FAMILIES if supports(f, x))})")
    return name
