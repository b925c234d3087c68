"""The campaign: per reader, a worker process draws N mutated inputs with hypothesis and runs each
through the reader; the parent watches it (an input still running after HANG_SECONDS is a hang:
the worker is killed, the input kept, a new worker goes on with the rest).

Per input the worker checks (failures by kind, what the results file counts):
  uncaught        an exception that is not one of the library's own error types
  bad_message     a library error whose message is more than one line or names no file
  run_after_load  (.aqz) a file that loaded, whose program then failed to run: validation missed it
  over_allocation the reader held more than A x input bytes + B (its bound), or hit MemoryError;
                  measured as the growth of the peak resident set during the call (Linux clear_refs
                  resets it before each input), or for the C runtime the sanitizer's heap hooks
                  (every malloc counted); the worker runs under an address-space limit (AS_LIMIT
                  beyond its imports), so an allocation too large to touch fails as MemoryError
  write_outside   a file written, made or removed anywhere but the reader's output folder
                  (a Python audit hook on every open-for-write, mkdir, rename, link, remove... and a
                  listing of the sandbox before and after)
  hang            still running after HANG_SECONDS (wall clock)
  crash           the process died (a signal) on the input
  sanitizer       (C runtime) an AddressSanitizer, UndefinedBehaviorSanitizer or LeakSanitizer report
"""
from __future__ import annotations

import json
import os
import resource
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

HANG_SECONDS = 5.0
AS_LIMIT = 6 << 30                # address space the worker may add after its imports
FAILURE_KINDS = ("uncaught", "bad_message", "run_after_load", "over_allocation", "write_outside", "hang", "crash",
                 "sanitizer")
_WRITE_EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.symlink", "os.link",
                 "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.copyfile", "shutil.move",
                 "shutil.rmtree", "os.mkfifo", "os.mknod"}


# ------------------------------------------------------------------ the worker

class _Watch:
    """Audit-hook record of what the process writes while a reader runs."""

    def __init__(self):
        self.active, self.events = False, []
        sys.addaudithook(self.hook)

    def hook(self, event, args):
        if not self.active:
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            if isinstance(path, int):
                return
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writes:
                self.events.append(("open", os.fsdecode(path) if isinstance(path, (str, bytes)) else str(path)))
        elif event in ("os.symlink", "os.link"):   # (source, destination): the link is made at destination
            if len(args) > 1 and isinstance(args[1], (str, bytes, os.PathLike)):
                self.events.append((event, os.fsdecode(args[1])))
        elif event in _WRITE_EVENTS:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)):
                    self.events.append((event, os.fsdecode(a)))


def _inside(path: str, folder: Path) -> bool:
    try:
        p = Path(os.path.abspath(path))
        f = Path(os.path.abspath(folder))
        return p == f or f in p.parents
    except (ValueError, OSError):
        return False


def _listing(root: Path, skip: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            dirnames[:] = []
            continue
        for n in filenames + dirnames:
            p = d / n
            try:
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
            except OSError:
                pass
    return out


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.lstat().st_size for p in path.rglob("*"))
    return path.stat().st_size


def _one_line_naming(msg: str, names) -> bool:
    return "\n" not in msg.strip() and any(n and n in msg for n in names)


def keep_case(failures: Path, reader: str, i: int, rec: dict, case_dir: Path) -> None:
    """A failing input kept as it was (files, links, folders; FIFOs and devices left out) with its record."""
    keep = failures / reader / f"{rec['kind']}-{os.getpid()}-{i:06d}-{rec['label']}"
    try:
        if case_dir.exists():
            shutil.copytree(case_dir, keep, symlinks=True, ignore_dangling_symlinks=True,
                            ignore=lambda d, names: [n for n in names if _special(Path(d) / n)])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "failure.json").write_text(json.dumps(rec, indent=1))
    except OSError:
        pass


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _worker_setup(reader, seed_dir: Path, work: Path):
    """The reader's context; the C driver of a native reader (else None); the process in `work`;
    the reader warmed up (imports and first-call set-up, before anything is timed)."""
    ctx = reader.setup(seed_dir, work)
    driver = None
    if reader.native:
        from .native import Driver, build_driver

        driver = Driver(build_driver(Path(seed_dir) / "c" / "model", Path(seed_dir).parent / "c_driver"))
    os.chdir(work)
    out_dir = work / "out"
    for path in ctx.get("warm", []):
        out_dir.mkdir(exist_ok=True)
        try:
            reader.target(path, out_dir, ctx)
        except Exception:   # noqa: BLE001
            pass
        shutil.rmtree(out_dir, ignore_errors=True)
    return ctx, driver


def _limit_address_space() -> None:
    """RLIMIT_AS: what the process holds now plus AS_LIMIT (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _status("VmSize") + AS_LIMIT
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _empty_folder(d: Path) -> None:
    """`d` made, or emptied of everything in it (FIFOs and links too)."""
    if d.exists():
        for p in sorted(d.rglob("*"), reverse=True):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()
    d.mkdir(exist_ok=True)


def _call_reader(reader, path: Path, out_dir: Path, ctx, allowed, run_after_load,
                 names) -> tuple[str, str | None, str]:
    """(outcome, failure kind or None, message) of one call of the reader on `path`: accepted;
    refused with a library error (`allowed`; a bad_message unless one line naming one of `names`);
    or a failure (`run_after_load`: readers.RunAfterLoad)."""
    try:
        reader.target(path, out_dir, ctx)
        return "accepted", None, ""
    except allowed as e:
        msg = str(e)
        return "refused", None if _one_line_naming(msg, names) else "bad_message", msg
    except run_after_load as e:
        return "failure", "run_after_load", str(e)
    except MemoryError as e:
        return "failure", "over_allocation", f"MemoryError: {e}"
    except BaseException as e:   # noqa: BLE001  (what the fuzzer looks for)
        if isinstance(e, KeyboardInterrupt):
            raise
        return "failure", "uncaught", f"{type(e).__name__}: {str(e)[:300]}"


def _python_case(reader, ctx, path: Path, work: Path, watch: _Watch, allowed, bound: int) -> dict:
    """Run a Python reader on one input, watching what it writes (audit hook, and a listing of the
    sandbox: `work`'s grandparent, where escapes of up to two levels land) and its peak memory:
    {outcome, kind, seconds, peak, msg}, the checks' verdict overriding the call's."""
    from .readers import RunAfterLoad

    sandbox, case_dir, out_dir = work.parent.parent, work / "case", work / "out"
    before = _listing(sandbox, out_dir)
    rss_ok = _reset_peak()
    rss0 = _status("VmRSS")
    watch.events, watch.active = [], True
    t0 = time.perf_counter()
    outcome, kind, msg = _call_reader(reader, path, out_dir, ctx, allowed, RunAfterLoad,
                                      [str(path), path.name, str(work)])
    seconds = time.perf_counter() - t0
    watch.active = False
    peak = max(0, _status("VmHWM") - rss0) if rss_ok else 0
    outside = [f"{ev} {p}" for ev, p in watch.events if not _inside(p, out_dir)]
    after = _listing(sandbox, out_dir)
    changed = sorted(set(after) - set(before)) + sorted(p for p in before if p not in after)
    changed = [p for p in changed if not _inside(p, case_dir)]
    if outside or changed:
        kind, msg = "write_outside", "; ".join((outside + changed)[:5])
    if kind is None and peak > bound:
        kind, msg = "over_allocation", f"peak {peak} bytes > bound {bound}"
    if kind is not None and outcome != "failure":
        outcome = "failure"
    return {"outcome": outcome, "kind": kind, "seconds": seconds, "peak": peak, "msg": msg[:500]}


def worker(reader_name: str, n: int, seed: int, work: Path, seed_dir: Path, out) -> None:
    """Draw and run n inputs; report each on `out` ("S i label" before, "R i json" after)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from .readers import READERS, expected_errors

    _one_thread()
    reader = READERS[reader_name]
    allowed = expected_errors()
    work = Path(work)
    failures = Path(os.environ.get("INTASR_FUZZ_FAILURES", work / "failures"))
    case_dir, out_dir = work / "case", work / "out"
    ctx, driver = _worker_setup(reader, seed_dir, work)
    watch = _Watch()
    if not reader.native:
        _limit_address_space()
    counter = [0]

    def emit(*parts):
        out.write(" ".join(str(p) for p in parts) + "\n")
        out.flush()

    @hseed(seed)
    @settings(max_examples=n, phases=[Phase.generate], database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        i = counter[0]
        counter[0] += 1
        for d in (case_dir, out_dir):
            _empty_folder(d)
        path, label = reader.make(data.draw, ctx, case_dir)
        size = _size(path)
        bound = reader.alloc[0] * size + reader.alloc[1]
        emit("S", i, label)
        rec = {"i": i, "label": label, "size": size, "bound": bound}
        if reader.native:
            rec.update(_native_case(reader, driver, ctx, path, work, bound))
        else:
            rec.update(_python_case(reader, ctx, path, work, watch, allowed, bound))
        if rec.get("kind") is not None:
            keep_case(failures, reader_name, i, rec, case_dir)
        emit("R", i, json.dumps(rec))

    try:
        one()
    finally:
        if driver is not None:
            driver.stop()


def _native_case(reader, driver, ctx, path: Path, work: Path, bound: int) -> dict:
    from .native import REPORTS

    model, inp = (path, ctx["input_path"]) if reader.name == "c_model_bin" else (ctx["model_bin"], path)
    err = work / "out" / "stderr.txt"
    t0 = time.perf_counter()
    try:
        rc, peak, seconds, leaks = driver.call(model, inp, err, HANG_SECONDS)
    except TimeoutError:
        return {"outcome": "failure", "kind": "hang", "seconds": time.perf_counter() - t0, "peak": 0,
                "msg": f"no answer in {HANG_SECONDS} s"}
    except RuntimeError as e:
        text = err.read_text(errors="replace") if err.is_file() else ""
        kind = "sanitizer" if any(r in text for r in REPORTS) else "crash"
        if "allocation-size-too-big" in text or "out of memory" in text or "requested allocation size" in text:
            kind = "over_allocation"
        first = next((ln for ln in text.splitlines() if any(r in ln for r in REPORTS)), str(e))
        driver.stop()
        return {"outcome": "failure", "kind": kind, "seconds": time.perf_counter() - t0, "peak": 0,
                "msg": first[:500]}
    text = err.read_text(errors="replace") if err.is_file() else ""
    kind, outcome = None, "accepted" if rc == 0 else "refused"
    if leaks or any(r in text for r in REPORTS):
        kind = "sanitizer"
        driver.stop()
    elif rc not in (0, 2):
        kind = "crash"
    elif rc == 2 and not _one_line_naming(text, [str(path), path.name]):
        kind = "bad_message"
    elif peak > bound:
        kind = "over_allocation"
    if kind:
        outcome = "failure"
    return {"outcome": outcome, "kind": kind, "seconds": seconds, "peak": peak, "msg": text.strip()[:500]}


# ------------------------------------------------------------------ the parent

def _spawn(reader: str, n: int, seed: int, work: Path, seed_dir: Path, failures: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "INTASR_FUZZ_FAILURES": str(failures)}
    cmd = [sys.executable, "-m", "intasr.fuzz", "worker", reader, str(n), str(seed), str(work), str(seed_dir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1)


def run_reader(reader: str, n: int, seed: int, root: Path, seed_dir: Path, failures: Path, progress=None) -> dict:
    """n inputs through one reader (workers restarted after a hang or a crash)."""
    from .readers import READERS

    native = READERS[reader].native
    work = root / reader / "sandbox" / "a" / "work"
    if work.parent.parent.exists():
        shutil.rmtree(work.parent.parent)
    work.mkdir(parents=True)
    stats = {"reader": reader, "call": READERS[reader].what, "inputs": 0, "accepted": 0, "refused": 0,
             "failures": {k: 0 for k in FAILURE_KINDS}, "slowest": None, "max_alloc_ratio": 0.0,
             "bound": {"per_input_byte": READERS[reader].alloc[0], "plus_bytes": READERS[reader].alloc[1]},
             "labels": {}, "examples": [], "seconds": 0.0, "workers": 0}
    t_start = time.perf_counter()
    attempt = 0
    while stats["inputs"] < n:
        left = n - stats["inputs"]
        proc = _spawn(reader, left, seed + 7919 * attempt, work, seed_dir, failures)
        attempt += 1
        stats["workers"] += 1
        current, started = None, None
        while True:
            timeout = None if current is None else max(0.0, (60.0 if native else HANG_SECONDS) - (time.perf_counter() - started))
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            if not ready:   # a hang: keep the input, kill the worker, go on with a new one
                proc.kill()
                proc.wait()
                _record(stats, {"label": current[1], "outcome": "failure", "kind": "hang",
                                "seconds": time.perf_counter() - started, "peak": 0, "size": 0, "bound": 1,
                                "msg": f"killed after {HANG_SECONDS} s"}, work, failures, reader)
                break
            line = proc.stdout.readline()
            if not line:
                rc = proc.wait()
                if current is not None:   # died on an input
                    err = proc.stderr.read()[-400:]
                    _record(stats, {"label": current[1], "outcome": "failure", "kind": "crash",
                                    "seconds": time.perf_counter() - started, "peak": 0, "size": 0, "bound": 1,
                                    "msg": f"worker exit {rc}: {err}"}, work, failures, reader)
                elif rc != 0 and stats["inputs"] < n:
                    raise RuntimeError(f"fuzz worker for {reader} failed (exit {rc}):\n{proc.stderr.read()[-3000:]}")
                break
            tag, rest = line.split(" ", 1)
            if tag == "S":
                i, label = rest.strip().split(" ", 1)
                current, started = (int(i), label), time.perf_counter()
            elif tag == "R":
                _record(stats, json.loads(rest.split(" ", 1)[1]), work, failures, reader)
                current = None
                if progress:
                    progress(stats)
                if stats["inputs"] >= n:
                    proc.kill()
                    proc.wait()
                    break
        if stats["inputs"] >= n:
            break
    stats["seconds"] = time.perf_counter() - t_start
    stats["rate_per_s"] = stats["inputs"] / stats["seconds"] if stats["seconds"] else 0.0
    return stats


def _record(stats, rec, work: Path, failures: Path, reader: str):
    stats["inputs"] += 1
    label = rec["label"]
    lab = stats["labels"].setdefault(label, {"inputs": 0, "refused": 0, "accepted": 0, "failures": 0})
    lab["inputs"] += 1
    if rec["outcome"] == "failure":
        stats["failures"][rec["kind"]] += 1
        lab["failures"] += 1
        if rec["kind"] in ("hang", "crash"):   # the worker is gone: its input is still in place
            keep_case(failures, reader, stats["inputs"], rec, work / "case")
        if len(stats["examples"]) < 40:
            stats["examples"].append({k: rec.get(k) for k in ("label", "kind", "msg", "seconds")})
    else:
        stats[rec["outcome"]] += 1
        lab[rec["outcome"]] += 1
    if stats["slowest"] is None or rec["seconds"] > stats["slowest"]["seconds"]:
        stats["slowest"] = {"label": label, "seconds": round(rec["seconds"], 4), "outcome": rec["outcome"],
                            "size": rec.get("size")}
    if rec.get("bound"):
        stats["max_alloc_ratio"] = max(stats["max_alloc_ratio"], rec.get("peak", 0) / rec["bound"])


def _special(p: Path) -> bool:
    import stat

    try:
        m = p.lstat().st_mode
    except OSError:
        return True
    return not (stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISLNK(m))
