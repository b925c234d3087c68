"""The C runtime under the sanitizers: the exported model and the fuzz driver (driver.c) built once
with ``-fsanitize=address,undefined -fno-sanitize-recover=all``, kept running, given one
(model.bin, input) pair per line."""
from __future__ import annotations

import os
import select
import shutil
import subprocess
from pathlib import Path

SANITIZE = "-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
ENV = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=86:max_allocation_size_mb=1024:"
                       "allocator_may_return_null=0:symbolize=1",
       "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87",
       "LSAN_OPTIONS": "exitcode=88", "OMP_NUM_THREADS": "1", "ASRQ_ISA": ""}
REPORTS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


def build_driver(model_dir, build_dir) -> Path:
    """The sanitized driver for the exported model in model_dir (rebuilt when its sources change)."""
    model_dir, build_dir = Path(model_dir), Path(build_dir)
    exe = build_dir / "fuzz_driver"
    src = Path(__file__).with_name("driver.c")
    stamp = "".join(p.read_text() for p in sorted(model_dir.glob("*.[ch]"))) + src.read_text() + SANITIZE
    if exe.is_file() and (build_dir / "stamp").is_file() and (build_dir / "stamp").read_text() == stamp:
        return exe
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(model_dir, build_dir)
    shutil.copyfile(src, build_dir / "driver.c")
    r = subprocess.run(["make", "-s", "-C", str(build_dir), "libasrq.a", f"CFLAGS={SANITIZE}", "OPENMP="],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"building the sanitized C runtime failed:\n{r.stderr[-2000:]}")
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-std=c99", "-D_POSIX_C_SOURCE=200809L", *SANITIZE.split(), "-o", str(exe),
                        str(build_dir / "driver.c"), str(build_dir / "libasrq.a")], capture_output=True, text=True,
                       cwd=build_dir)
    if r.returncode:
        raise RuntimeError(f"building the fuzz driver failed:\n{r.stderr[-2000:]}")
    (build_dir / "stamp").write_text(stamp)
    return exe


class Driver:
    """The running driver; ``call(model, input, err) -> (rc, peak, seconds, leaks)`` or raises
    TimeoutError (killed after `timeout` s) / RuntimeError (it died: a sanitizer report or a crash)."""

    def __init__(self, exe):
        self.exe = Path(exe)
        self.proc = None

    def start(self):
        env = {**os.environ, **ENV}
        if not env["ASRQ_ISA"]:
            del env["ASRQ_ISA"]
        self.proc = subprocess.Popen([str(self.exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env)

    def stop(self):
        if self.proc is not None:
            try:
                self.proc.kill()
            except OSError:
                pass
            self.proc.wait()
            self.proc = None

    def call(self, model, inp, err, timeout: float = 5.0):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{model}\t{inp}\t{err}\n".encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            raise RuntimeError(f"driver exited with status {rc}")
        rc, peak, us, leaks = (int(v) for v in line.split())
        return rc, peak, us / 1e6, leaks
