"""The package as a user installs it (issue 28): the wheel and the sdist carry every file the library
reads at run time, and the wheel, installed into a new environment outside the source tree, runs the
command line end to end (help, quantize, transcribe, export --c + make, verify)."""

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "intasr"

TINY_MODEL = """
import sys, torch
from intasr.models import ConvASR, save_model
from intasr.models.configs import block_config, convasr_config
torch.manual_seed(0)
jasper = [block_config(24, 1, 7, stride=2, residual=False), block_config(32, 2, 9), block_config(40, 1, 1, residual=False,
          separable=False)]
model = ConvASR(convasr_config(jasper, 40)).eval()
save_model(model, sys.argv[1])
"""


def _runtime_files() -> set[str]:
    """What the library reads from its own folder at run time: C sources, headers, Makefiles."""
    return {p.relative_to(LIB.parent).as_posix() for p in LIB.rglob("*")
            if p.is_file() and (p.suffix in (".c", ".h") or p.name == "Makefile")}


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(wheel, sdist) built from a copy of the sources (the build writes nothing into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    for kind in ("wheel", "sdist"):   # setuptools' PEP 517 hooks, no isolated build env (offline)
        code = (f"import setuptools.build_meta as b, sys; sys.exit(0 if b.build_{kind}({str(out)!r}) else 1)")
        subprocess.run([sys.executable, "-c", code], cwd=src, check=True, capture_output=True)
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def test_wheel_and_sdist_carry_every_runtime_file(dists):
    wheel, sdist = dists
    needed = _runtime_files()
    assert {"intasr/program/c/asrq_kernels.c", "intasr/program/c/Makefile",
            "intasr/intops/native_kernels.c"} <= needed
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert needed <= in_wheel, f"missing from the wheel: {sorted(needed - in_wheel)}"
    with tarfile.open(sdist) as t:
        in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    missing = {f"lib/{n}" for n in needed} - in_sdist
    assert not missing, f"missing from the sdist: {sorted(missing)}"
    meta = zipfile.ZipFile(wheel).read(next(n for n in in_wheel if n.endswith("METADATA"))).decode()
    from intasr import __version__

    assert f"Version: {__version__}" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires and "==" not in requires[0], requires   # a range: exact pins live in constraints.txt
    for extra in ("onnx", "plots", "hama", "dask", "book"):
        assert f"Provides-Extra: {extra}" in meta


def test_installed_wheel_runs_the_command_line_outside_the_source_tree(dists, tmp_path, test_other_dir):
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no make or C compiler here: export --c cannot be built")
    wheel, _ = dists
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    # the wheel into the new environment, with pip from this one; its dependencies are this
    # environment's (a path line, so the checkout's editable install is not seen there)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "zz_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "INTASR_BUILD")}
    env.update(INTASR_BUILD=str(work / "cache"), OMP_NUM_THREADS="1")
    cli = str(env_dir / "bin" / "intasr")

    def run(*args):
        r = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        return r.stdout

    where = run(str(py), "-c", "import intasr; print(intasr.__file__)").strip()
    assert where.startswith(purelib) and not where.startswith(str(ROOT)), where
    assert "quantize" in run(cli, "--help")
    run(str(py), "-c", TINY_MODEL, "tiny.nemo")
    run(cli, "quantize", "--model", "tiny.nemo", "--calibration", "random", "--batch-size", "2",
        "--frames", "200", "--out", "tiny.aqz")
    rng = np.random.default_rng(0)
    sf.write(work / "clip.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    run(cli, "transcribe", "clip.wav", "--model", "tiny.aqz", "--json", "clip.json")
    assert json.loads((work / "clip.json").read_text())[0]["file"].endswith("clip.wav")
    run(cli, "export", "tiny.aqz", "--c", "c_lib")
    run("make", "-s", "-C", "c_lib")
    assert any(p.suffix == ".so" for p in (work / "c_lib").iterdir())
    run(cli, "verify", "tiny.aqz", "--data", str(test_other_dir), "--utterances", "2", "--seconds", "2",
        "--backends", "numpy", "c", "--json", "verify.json")
    assert json.loads((work / "verify.json").read_text())["passed"]
