"""Where the assets are by default. Every command takes explicit paths; these are only defaults.

`INTASR_SHARED` points at the shared asset folder (default: `../shared` beside the repository
checkout, or beside the current directory); `INTASR_BUILD` at the folder for generated models
and caches (default: `build/` in the repository, or in the current directory);
`INTASR_NATIVE_CACHE` at the compiled C libraries' cache (default: `~/.cache/intasr`).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _repo_or_cwd() -> Path:
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


def shared_dir() -> Path:
    if os.environ.get("INTASR_SHARED"):
        return Path(os.environ["INTASR_SHARED"])
    return _repo_or_cwd().parent / "shared"


def build_dir() -> Path:
    return Path(os.environ.get("INTASR_BUILD") or _repo_or_cwd() / "build")


def native_cache() -> Path:
    """The compiled C libraries' cache, absolute: make runs in each library's own folder, where a
    relative $INTASR_NATIVE_CACHE would name another place."""
    return Path(os.environ.get("INTASR_NATIVE_CACHE") or Path.home() / ".cache" / "intasr").absolute()


def folded_weights() -> Path:
    return shared_dir() / "assets" / "quartznet15x5_base_en_bnfolded.npz"


def librispeech(split: str) -> Path:
    return shared_dir() / "data" / "LibriSpeech" / split


def restored_model() -> Path:
    """The real QuartzNet-15x5 with BatchNorm restored (made by `make model` / `intasr restore-bn`)."""
    return build_dir() / "quartznet15x5_restored.nemo"


def display_path(path) -> str:
    """A path as results files and printed outputs name it, never the build machine's own folders:
    relative to the repository when inside it (`benchmarks/results/x.json`), `build/...` under the
    build folder, `../shared/...` under the shared assets (the documented default location, even
    when INTASR_SHARED points elsewhere), and the bare file name for anything else (a temporary
    folder, a home directory). Symlinks are not followed: a scratch checkout's build/ link stays
    `build/...`."""
    p = Path(os.path.abspath(os.fspath(path)))
    for base, label in ((_repo_or_cwd(), ""), (build_dir(), "build"), (shared_dir(), "../shared")):
        try:
            rel = p.relative_to(os.path.abspath(base))
        except ValueError:
            continue
        return (Path(label) / rel).as_posix() if label else (rel.as_posix() or ".")
    return p.name
