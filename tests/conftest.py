"""Shared pytest fixtures.

Real data lives in ../shared beside the repo (CI clones the repo next to it);
ASRQUANT_SHARED overrides the location. Tests that need it skip when it is absent.
"""
import os
from pathlib import Path

import pytest


def _shared_path() -> Path:
    return Path(os.environ.get("ASRQUANT_SHARED") or Path(__file__).resolve().parents[2] / "shared")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(f"shared assets not found at {path} (set ASRQUANT_SHARED)")
    return path


def _split(shared: Path, name: str) -> Path:
    path = shared / "data" / "LibriSpeech" / name
    if not path.is_dir():
        pytest.skip(f"LibriSpeech {name} not found at {path}")
    return path


@pytest.fixture(scope="session")
def test_other_dir(shared_dir) -> Path:
    return _split(shared_dir, "test-other")


@pytest.fixture(scope="session")
def train_clean_dir(shared_dir) -> Path:
    return _split(shared_dir, "train-clean-100")
