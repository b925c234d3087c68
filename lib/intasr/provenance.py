"""Where a result came from: model file hash, evaluation-set fingerprint, code version, machine.

``provenance(...)`` flattens all of them into columns of one results row, so that a row can be
traced (and a resumed run can tell rows made with another model, data or code from its own).
Nothing here imports torch at module level: the grid's scheduler side stays light.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

from .version import __version__

UNKNOWN = "unknown"
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path, cached: bool = True) -> str:
    """sha256 of a file, read in 1 MiB chunks (the library's one file hash). cached: remembered per
    process by (path, size, mtime), so that hashing a 70 MB model for every grid cell costs one
    read; cached=False reads the file every time (a cache checking its own files, which may be
    rewritten in place within the clock's resolution)."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot hash, file not readable ({e.strerror})") from e
    key = (str(path), st.st_size, st.st_mtime_ns)
    if cached and key in _FILE_HASHES:
        return _FILE_HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if cached:
        _FILE_HASHES[key] = h.hexdigest()
    return h.hexdigest()


def _relative_names(paths: list[Path]) -> list[str]:
    """File names relative to the entries' common folder: the same data set copied elsewhere
    fingerprints the same, two files of the same name in different folders stay apart."""
    if not paths:
        return []
    parents = [str(Path(p).parent) for p in paths]
    root = os.path.commonpath(parents) if len(set(Path(p).anchor for p in paths)) == 1 else ""
    return [os.path.relpath(str(p), root).replace(os.sep, "/") if root else Path(p).name for p in paths]


def eval_set_fingerprint(entries) -> dict:
    """{utterances, words, sha256} of an evaluation set (``data.Utterance`` records, or anything
    with ``audio_path`` and ``text``). The hash covers the sorted (relative file name, transcript)
    pairs: independent of listing order and of where the folder lives; it changes when a
    transcript, a file name or the number of files changes. Audio bytes are not read (an 11,000
    utterance set would take minutes); a re-encoded file under the same name is not detected."""
    entries = list(entries)
    names = _relative_names([Path(u.audio_path) for u in entries])
    pairs = sorted(zip(names, ((u.text or "") for u in entries)))
    h = hashlib.sha256()
    for name, text in pairs:
        h.update(name.encode())
        h.update(b"\0")
        h.update(text.encode())
        h.update(b"\n")
    return {"utterances": len(entries), "words": sum(len(t.split()) for _, t in pairs), "sha256": h.hexdigest()}


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict:
    """{version, commit, dirty}: the library version, and the git commit of the checkout it runs
    from with whether tracked files differ from it ("unknown" outside a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"version": __version__, "commit": UNKNOWN, "dirty": UNKNOWN}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"version": __version__, "commit": commit, "dirty": UNKNOWN if status is None else bool(status)}


def _physical_cores() -> int | None:
    """Physical cores of the online CPUs: distinct (package, core) pairs of Linux's sysfs topology;
    None where there is none."""
    seen = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
        try:
            if (cpu / "online").is_file() and (cpu / "online").read_text().strip() == "0":
                continue
            seen.add(((cpu / "topology" / "physical_package_id").read_text().strip(),
                      (cpu / "topology" / "core_id").read_text().strip()))
        except OSError:
            continue
    return len(seen) or None


def _cpu_info() -> dict:
    """The CPU, from the one CPU-feature probe (``intasr.cpu``: CPUID, as this process sees it,
    so an emulated or masked CPU is recorded as such). cpu, cores and vnni are the columns of the
    first results rows; kernel_family is the C runtime's family in this process ($ASRQ_ISA
    honoured, "unknown" for an $ASRQ_ISA this CPU cannot run), cpu_flags the features the probe
    found (/proc/cpuinfo's spelling, space-separated), cpu_probe where they were read from
    (cpuid; Linux's /proc/cpuinfo where CPUID could not run; none off x86), asrq_isa the forced
    family if any."""
    from .cpu import ISA_ENV, cpu_features, kernel_family

    f = cpu_features()
    try:
        family = kernel_family()
    except ValueError:
        family = UNKNOWN
    known = f.source != "none"
    return {"cpu": f.model or platform.processor() or UNKNOWN, "cores": _physical_cores(),
            "vnni": f.vnni if known else None, "kernel_family": family,
            "cpu_flags": " ".join(f.linux_flags()) if known else None, "cpu_probe": f.source,
            "asrq_isa": os.environ.get(ISA_ENV) or None}


def machine() -> dict:
    """{cpu, cores, vnni, kernel_family, cpu_flags, cpu_probe, asrq_isa, threads, python, torch,
    numpy, onnxruntime}: what a timing or an integer kernel result depends on (``_cpu_info``).
    threads is what this process may use (affinity)."""
    try:
        threads = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        threads = os.cpu_count()
    info = {**_cpu_info(), "threads": threads, "python": platform.python_version()}
    for name in ("torch", "numpy", "onnxruntime"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def provenance(model_path=None, eval_entries=None, settings: dict | None = None) -> dict:
    """One results row's provenance columns: model_sha256, eval_sha256 / eval_utterances /
    eval_words, every setting given (as is), code_version / code_commit / code_dirty, and the
    machine (``machine()``: cpu, cores, vnni, kernel_family, cpu_flags, cpu_probe, asrq_isa, threads,
    torch, numpy, onnxruntime, python). A part not given is
    "unknown" so that every row has the same columns."""
    row: dict = {"model_sha256": file_sha256(model_path) if model_path is not None else UNKNOWN}
    if eval_entries is not None:
        fp = eval_set_fingerprint(eval_entries)
        row.update(eval_sha256=fp["sha256"], eval_utterances=fp["utterances"], eval_words=fp["words"])
    else:
        row.update(eval_sha256=UNKNOWN, eval_utterances=None, eval_words=None)
    row.update(settings or {})
    code = code_version()
    row.update(code_version=code["version"], code_commit=code["commit"], code_dirty=code["dirty"])
    row.update(machine())
    return row
