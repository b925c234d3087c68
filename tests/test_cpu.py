"""The one CPU-feature probe (lib/intasr/cpu.py, issue 25): CPUID as this process sees it.

What it says agrees with GCC's own CPUID reader (__builtin_cpu_supports), it reports the CPU that
qemu-x86_64 -cpu max emulates (AVX2, no AVX-512) rather than the host's, ASRQ_ISA forcing refuses
what the CPU cannot run, the /proc/cpuinfo fallback parses what Linux writes, and no other module
reads /proc/cpuinfo."""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import intasr
from intasr import cpu

ROOT = Path(__file__).resolve().parents[1]
LIB = Path(intasr.__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")
# the probe's fields -> GCC's names for __builtin_cpu_supports
GCC_NAMES = {"sse41": "sse4.1", "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
             "avx512vnni": "avx512vnni", "avxvnni": "avxvnni", "amx_int8": "amx-int8"}
PROBE = ("import json, os; from intasr.cpu import cpu_features, kernel_family; f = cpu_features(); "
         "d = f.as_dict()\n"
         "try:\n    kernel_family('avx512-vnni'); d['forced'] = 'accepted'\n"
         "except ValueError as e:\n    d['forced'] = str(e)\n"
         "print(json.dumps(d))")


def _probe_in(cmd: list[str]) -> dict:
    """The probe's as_dict() in a new process started as cmd + [python, -c, PROBE]."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB), os.environ.get("PYTHONPATH", "")])}
    env.pop(cpu.ISA_ENV, None)
    r = subprocess.run([*cmd, sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the real CPU

def test_the_probe_reads_cpuid_here():
    f = cpu.cpu_features()
    json.dumps(f.as_dict())
    assert f.as_dict()["kernel_family"] == f.best_family in cpu.FAMILIES
    assert f.vnni == ((f.avx512vnni and f.avx512bw) or f.avxvnni)
    assert set(f.flags()) <= set(cpu.LINUX_NAMES) and len(f.linux_flags()) == len(f.flags())
    if not X86:
        assert f.source == "none" and f.best_family == "portable" and not f.flags()
        return
    # CPUID where this process may map executable memory (Linux, macOS), else Linux's file
    assert f.source in ("cpuid", "/proc/cpuinfo") and f.vendor and f.sse41
    assert not (f.avx512f or f.avxvnni) or f.avx2          # every CPU with those has AVX2


@pytest.mark.skipif(not X86, reason="CPUID is x86")
@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_the_flags_agree_with_gcc_builtin_cpu_supports(tmp_path):
    """GCC's runtime (libgcc's __cpu_indicator_init: CPUID + XGETBV) and the probe, each in a child
    process (a child runs natively even when this process is emulated), give the same features."""
    names = {}
    for field, name in GCC_NAMES.items():   # an older compiler lacks some names (avxvnni, amx-int8)
        src = tmp_path / "one.c"
        src.write_text(f'int f(void) {{ return __builtin_cpu_supports("{name}"); }}\n')
        if subprocess.run(["cc", "-fsyntax-only", str(src)], capture_output=True).returncode == 0:
            names[field] = name
    assert {"sse41", "avx2", "fma", "avx512f", "avx512bw"} <= set(names)
    lines = "\n".join(f'    printf("{f} %d\\n", __builtin_cpu_supports("{n}") ? 1 : 0);' for f, n in names.items())
    (tmp_path / "supports.c").write_text(f"#include <stdio.h>\nint main(void) {{\n    __builtin_cpu_init();\n"
                                         f"{lines}\n    return 0;\n}}\n")
    subprocess.run(["cc", "-O0", str(tmp_path / "supports.c"), "-o", str(tmp_path / "supports")], check=True)
    out = subprocess.run([str(tmp_path / "supports")], capture_output=True, text=True, check=True).stdout
    gcc = {k: v == "1" for k, v in (ln.split() for ln in out.splitlines())}
    probe = _probe_in([])
    if probe["source"] != "cpuid":
        pytest.skip(f"CPUID could not be run here (the probe read {probe['source']})")
    assert {k: probe[k] for k in gcc} == gcc


@pytest.mark.skipif(not X86, reason="qemu-x86_64 runs this x86-64 python only on an x86-64 host")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-x86_64 (Debian package qemu-user)")
def test_under_qemu_the_probe_sees_the_emulated_avx2_cpu_not_the_host():
    """qemu-x86_64 -cpu max emulates an AVX2 CPU without AVX-512 (QEMU 7.2's TCG): the probe says so
    whatever the host has (/proc/cpuinfo would still describe the host), and forcing the AVX-512
    kernels there is refused naming that CPU."""
    f = _probe_in(["qemu-x86_64", "-cpu", "max"])
    assert f["source"] == "cpuid" and f["avx2"] and f["fma"] and f["sse41"]
    assert not f["avx512f"] and not f["avx512vnni"] and not f["vnni"]
    assert f["kernel_family"] == "avx2"
    assert f["model"] in f["forced"] and "cannot run the avx512-vnni kernels" in f["forced"]


# --------------------------------------------------------------------------- ASRQ_ISA

def _fake(**flags) -> cpu.CpuFeatures:
    return cpu.CpuFeatures(arch="x86_64", vendor="AuthenticAMD", model="Fake EPYC 7B13", source="cpuid", **flags)


AVX2_ONLY = dict(sse41=True, avx2=True, fma=True)


def test_isa_forcing(monkeypatch):
    monkeypatch.delenv(cpu.ISA_ENV, raising=False)
    assert cpu.kernel_family() == cpu.cpu_features().best_family
    assert cpu.kernel_family("portable") == "portable"   # any CPU runs the portable kernels
    monkeypatch.setenv(cpu.ISA_ENV, "portable")
    assert cpu.kernel_family() == "portable"
    monkeypatch.setenv(cpu.ISA_ENV, "")                  # set but empty: not a request
    assert cpu.kernel_family() == cpu.cpu_features().best_family
    monkeypatch.setenv(cpu.ISA_ENV, "avx1024")
    with pytest.raises(ValueError, match="ASRQ_ISA='avx1024': unknown kernel family; "
                                         "choose from avx512-vnni, avx-vnni, avx2, portable"):
        cpu.kernel_family()
    with pytest.raises(ValueError, match="choose from"):
        cpu.kernel_family("sse2")
    # a family this CPU lacks, on the real CPU (where it lacks one) and on an AVX2-only one
    monkeypatch.delenv(cpu.ISA_ENV)
    real = cpu.cpu_features()
    for fam in cpu.FAMILIES:
        if not cpu.supports(real, fam):
            with pytest.raises(ValueError, match=re.escape(f"this CPU ({real.model or real.arch}) cannot run")):
                cpu.kernel_family(fam)
    monkeypatch.setattr(cpu, "cpu_features", lambda: _fake(**AVX2_ONLY))
    assert cpu.kernel_family() == "avx2" and cpu.kernel_family("portable") == "portable"
    for fam in ("avx512-vnni", "avx-vnni"):
        monkeypatch.setenv(cpu.ISA_ENV, fam)
        with pytest.raises(ValueError, match=re.escape(f"ASRQ_ISA={fam}: this CPU (Fake EPYC 7B13) cannot run the "
                                                       f"{fam} kernels (it runs avx2, portable)")):
            cpu.kernel_family()


def test_families_follow_the_features():
    assert _fake().best_family == "portable"
    assert _fake(**AVX2_ONLY).best_family == "avx2"
    assert _fake(**AVX2_ONLY, avxvnni=True).best_family == "avx-vnni"
    # AVX-512 VNNI needs F and BW too (the kernels use byte shuffles on zmm)
    assert _fake(**AVX2_ONLY, avx512f=True, avx512vnni=True).best_family == "avx2"
    full = _fake(**AVX2_ONLY, avx512f=True, avx512bw=True, avx512vnni=True)
    assert full.best_family == "avx512-vnni" and full.vnni
    assert full.linux_flags() == ["avx2", "avx512_vnni", "avx512bw", "avx512f", "fma", "sse4_1"]


# --------------------------------------------------------------------------- the /proc/cpuinfo fallback

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8
"""


def _with_cpuinfo(monkeypatch, path: Path) -> None:
    real_path = cpu.Path
    monkeypatch.setattr(cpu, "Path", lambda p: path if str(p) == "/proc/cpuinfo" else real_path(p))


def test_proc_cpuinfo_fallback_parses_linux_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(CPUINFO)
    _with_cpuinfo(monkeypatch, fake)
    f = cpu._from_proc_cpuinfo("x86_64")
    assert (f.source, f.vendor, f.model) == ("/proc/cpuinfo", "GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+")
    assert f.sse41 and f.avx2 and f.fma and f.avx512f and f.avx512bw and f.avx512vnni and f.amx_int8
    assert not f.avxvnni      # "avx512_vnni" is not "avx_vnni"
    assert f.vnni and f.best_family == "avx512-vnni"
    fake.write_text(CPUINFO.replace(" avx512f avx512bw avx512vl avx512_vnni", " avx_vnni"))
    f = cpu._from_proc_cpuinfo("x86_64")
    assert f.avxvnni and not f.avx512f and not f.avx512vnni and f.best_family == "avx-vnni"
    _with_cpuinfo(monkeypatch, tmp_path / "missing")
    f = cpu._from_proc_cpuinfo("x86_64")
    assert f.source == "none" and not f.flags() and f.best_family == "portable"


def test_cpu_features_falls_back_only_when_cpuid_cannot_run(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(CPUINFO)
    _with_cpuinfo(monkeypatch, fake)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")

    def no_exec(arch):
        raise OSError("mmap: Operation not permitted (W^X)")

    monkeypatch.setattr(cpu, "_from_cpuid", no_exec)
    cpu.cpu_features.cache_clear()
    try:
        f = cpu.cpu_features()
        assert f.source == "/proc/cpuinfo" and f.model == "Intel(R) Xeon(R) Platinum 8480+"
        monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
        cpu.cpu_features.cache_clear()
        f = cpu.cpu_features()   # not x86: no CPUID, no x86 flags from a file either
        assert f.source == "none" and f.arch == "aarch64" and f.best_family == "portable"
    finally:
        monkeypatch.undo()
        cpu.cpu_features.cache_clear()
    assert cpu.cpu_features().source == ("cpuid" if X86 else "none")


# --------------------------------------------------------------------------- one probe

def test_no_other_module_reads_proc_cpuinfo():
    """Every runtime choice, skip and provenance record reads intasr.cpu; /proc/cpuinfo (the
    host's CPU, even to an emulated process) only in its fallback."""
    literal = re.compile(r"""["']/proc/cpuinfo["']""")
    allowed = {ROOT / "lib" / "intasr" / "cpu.py", Path(__file__).resolve()}
    offenders = []
    for folder in ("lib", "tools", "benchmarks", "tests", "notebooks"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix == ".py" and path.resolve() not in allowed:
                text = path.read_text()
            elif path.suffix == ".ipynb":
                text = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
            else:
                continue
            if literal.search(text):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"read the CPU through intasr.cpu.cpu_features(), not /proc/cpuinfo: {offenders}"
