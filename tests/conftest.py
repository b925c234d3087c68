"""Shared pytest fixtures.

Real data lives in ../shared beside the repo (CI clones the repo next to it);
INTASR_SHARED overrides the location. Tests that need it skip when it is absent.
"""
import os
from pathlib import Path

import pytest

# A quantized model's engine (IntegerModel.use_runtime) is the torch integer reference in the tests
# unless a test asks for another: the C runtime builds a library per program (seconds each), and
# tests/test_engine.py checks that it gives the same transcripts and integers.
os.environ.setdefault("INTASR_RUNTIME", "torch")


def _shared_path() -> Path:
    return Path(os.environ.get("INTASR_SHARED") or Path(__file__).resolve().parents[2] / "shared")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(f"shared assets not found at {path} (set INTASR_SHARED)")
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


def speech_like_audio(seconds=(2.0, 1.4, 0.9), seed=0):
    """A padded batch (audio [B, N], lengths) of speech-like noise at 16 kHz: harmonic tones with
    a slow envelope, one utterance per duration; needs no shared data."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = [int(s * 16000) for s in seconds]
    audio = torch.zeros(len(n), max(n))
    t = torch.arange(max(n)) / 16000
    for b, k in enumerate(n):
        f0 = 100 + 80 * torch.rand(1, generator=g)
        sig = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 6))
        env = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t + torch.rand(1, generator=g) * 6)
        audio[b, :k] = (0.1 * sig * env + 0.01 * torch.randn(max(n), generator=g))[:k]
    return audio, torch.tensor(n)


def randomize_weights(model, seed: int) -> None:
    """Encoder/decoder weights ~ N(0, 1/fan_in): a random but well-scaled network."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("encoder", "decoder")):
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5))


def fill_bn_statistics(encoder, *args, **kwargs) -> None:
    """Running statistics as training leaves them (cumulative average over one forward)."""
    import torch

    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    encoder.train()
    with torch.no_grad():
        encoder(*args, **kwargs)
    encoder.eval()


@pytest.fixture(scope="session")
def real_audio_batch(test_other_dir):
    """Three real test-other utterances as a padded batch (audio, lengths)."""
    from intasr.data import load_batch, read_librispeech

    return load_batch(read_librispeech(test_other_dir)[:3])


def random_quartznet5x5(audio_batch):
    """QuartzNet-5x5 with random weights (seeded) and BN statistics from `audio_batch`'s features."""
    import torch

    from intasr.models import ConvASR, config_for

    torch.manual_seed(0)
    model = ConvASR(config_for("quartznet5x5"))
    randomize_weights(model, seed=3)
    with torch.no_grad():
        mel, mel_len = model.features(*audio_batch)
    fill_bn_statistics(model.encoder, mel, mel_len)
    return model


def restored_hama_model():
    """The real hama Conformer (the `hama` package's asset) with BatchNorm statistics restored
    from four seeded speech-like utterances."""
    from intasr.models.hama import load_hama_model, restore_conformer_bn

    model = load_hama_model()
    audio, lengths = speech_like_audio((3.0, 2.5, 2.0, 1.5), seed=1)
    restore_conformer_bn(model, [(audio, lengths)], progress=False)
    return model


@pytest.fixture(scope="session")
def small_quartznet(real_audio_batch):
    """QuartzNet-5x5 with random weights and BN statistics from real audio features."""
    return random_quartznet5x5(real_audio_batch)


def load_script(path: Path, name: str | None = None):
    """A repository script (tools/, book/_ext/) imported as a module, for testing its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name or Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
