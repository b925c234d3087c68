"""The real files the fuzzers mutate, made here from small seeded models (no shared data needed).

``build_seeds(folder)`` writes, once per folder (a ``done`` marker):
  aqz/        tiny ConvASR W8A8 .aqz and a one-layer NeMo-architecture Conformer W8A8 .aqz
  nemo/       the tiny ConvASR's float .nemo
  hama/       the installed hama package's asr_waveform.hama (when hama is installed), else a small
              package written by ``write_hama``
  audio/      WAV (PCM16 16 kHz mono, 8-bit, float32 44.1 kHz stereo), FLAC, OGG, a silent 10-minute FLAC
  manifest/   a NeMo JSON-lines manifest over the audio files
  librispeech/ a tiny LibriSpeech split (speaker/chapter/*.flac + trans.txt) as a .tar and a .tar.gz
  c/          the tiny ConvASR exported to C: model.bin, the sources, and ASQ8 inputs
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

RATE = 16000
SEED_VERSION = "1"


def _tiny_config():
    from ..models.configs import block_config, convasr_config

    return convasr_config([block_config(32, 1, 11, stride=2, residual=False), block_config(32, 2, 13),
                   block_config(48, 1, 1, residual=False, separable=False)], 48)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic tones with a slow envelope (what tests/conftest.py calls speech-like), float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 100 + 80 * rng.random()
    sig = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + rng.random() * 6)
    return (0.1 * sig * env + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _tiny_convasr():
    import torch

    from ..models import ConvASR

    torch.manual_seed(0)
    model = ConvASR(_tiny_config()).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("encoder", "decoder")):
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2.0 + 0.05)
    return model


def _tiny_conformer():
    import torch

    from ..models import ConformerCTC, conformer_ctc_config
    from ..models.init import random_matrices_

    cfg = conformer_ctc_config("small", bpe=False, n_layers=1, d_model=32, n_heads=2, conv_kernel_size=5,
                               feat_in=64)
    torch.manual_seed(0)
    return random_matrices_(ConformerCTC(cfg).eval(), torch.Generator().manual_seed(0))


def _write_audio(d: Path) -> dict:
    import soundfile as sf
    from scipy.signal import resample_poly

    d.mkdir(parents=True, exist_ok=True)
    s = speech_like(0.6, seed=1)
    files = {}
    sf.write(d / "pcm16.wav", s, RATE, subtype="PCM_16")
    sf.write(d / "u8.wav", s, 8000 if False else RATE, subtype="PCM_U8")
    s44 = resample_poly(s, 441, 160).astype(np.float32)
    sf.write(d / "stereo44k.wav", np.stack([s44, 0.5 * s44], axis=1), 44100, subtype="FLOAT")
    sf.write(d / "speech.flac", s, RATE, subtype="PCM_16")
    sf.write(d / "speech.ogg", s, RATE, format="OGG", subtype="VORBIS")
    sf.write(d / "silence10min.flac", np.zeros(10 * 60 * RATE, np.float32), RATE, subtype="PCM_16")
    for p in sorted(d.iterdir()):
        files[p.name] = p
    return files


def _write_librispeech(d: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    root = d / "split"
    texts = {}
    for spk, chap, n in ((19, 198, 2), (26, 495, 1)):
        folder = root / str(spk) / str(chap)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            uid = f"{spk}-{chap}-{i:04d}"
            sf.write(folder / f"{uid}.flac", audio[: RATE // 4 * (i + 1)], RATE, subtype="PCM_16")
            lines.append(f"{uid} HELLO WORLD NUMBER {i}")
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
        texts[(spk, chap)] = lines
    for name, mode in (("split.tar", "w"), ("split.tar.gz", "w:gz")):
        with tarfile.open(d / name, mode, format=tarfile.PAX_FORMAT) as tar:
            for p in sorted(root.rglob("*")):
                info = tar.gettarinfo(p, arcname=str(p.relative_to(d)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if p.is_file():
                    with open(p, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    shutil.rmtree(root)


def build_seeds(folder) -> Path:
    """Write every seed file under `folder` (skipped when already there); returns the folder."""
    import torch

    from ..calibration import random_mels
    from ..integer_model import save_quantized
    from ..models import save_model
    from ..quantize import quantize

    d = Path(folder)
    if (d / "done").is_file() and (d / "done").read_text() == SEED_VERSION:
        _c_seeds(d)   # re-exported when the C backend's code changes
        return d
    if d.exists():
        shutil.rmtree(d)
    (d / "aqz").mkdir(parents=True)
    (d / "nemo").mkdir()
    model = _tiny_convasr()
    save_model(model, d / "nemo" / "tiny_convasr.nemo")
    q = quantize(model, random_mels(1, 2, 100), 8, 8)
    save_quantized(q, d / "aqz" / "tiny_convasr_w8a8.aqz")
    conf = _tiny_conformer()
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(2, 64, 120, generator=g)
    qc = quantize(conf, [(mel, torch.tensor([120, 97]))], 8, 8)
    save_quantized(qc, d / "aqz" / "tiny_conformer_w8a8.aqz")

    hd = d / "hama"
    hd.mkdir()
    try:
        from importlib import resources

        data = resources.files("hama.assets").joinpath("asr_waveform.hama").read_bytes()
        (hd / "asr_waveform.hama").write_bytes(data)
    except (ModuleNotFoundError, OSError):
        from ..models.hama import write_hama

        write_hama(hd / "small.hama", {"w": np.ones((4, 4), np.float16), "v": np.zeros(3, np.float32),
                                        "i": np.arange(6, dtype=np.int64).reshape(2, 3)})

    audio = _write_audio(d / "audio")
    md = d / "manifest"
    md.mkdir()
    rows = [{"audio_filepath": f"../audio/{name}", "duration": 0.6, "text": "hello world"}
            for name in ("pcm16.wav", "speech.flac", "stereo44k.wav")]
    rows.append({"audio_filepath": str((d / "audio" / "u8.wav").resolve()), "duration": 0.6, "id": "x"})
    (md / "manifest.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    ld = d / "librispeech"
    ld.mkdir()
    _write_librispeech(ld, speech_like(1.0, seed=2))

    _c_seeds(d)
    (d / "done").write_text(SEED_VERSION)
    assert audio and io
    return d


def _c_stamp() -> str:
    import hashlib

    from ..program import c_backend

    h = hashlib.sha256()
    for p in [Path(c_backend.__file__), Path(c_backend.__file__).with_name("c_lower.py"),
              *sorted(c_backend.SOURCES.iterdir())]:
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _c_seeds(d: Path) -> None:
    """The tiny ConvASR exported to C (model.bin, sources) and two ASQ8 inputs, made again whenever the
    C backend's code changed."""
    import torch

    from ..integer_model import load_quantized
    from ..program.c_backend import export_c, write_input

    cd = d / "c"
    stamp = _c_stamp()
    if (cd / "stamp").is_file() and (cd / "stamp").read_text() == stamp:
        return
    if cd.exists():
        shutil.rmtree(cd)
    q = load_quantized(d / "aqz" / "tiny_convasr_w8a8.aqz")
    export_c(q.program, cd / "model", labels=list(q.float_model_config.get("labels", [])) or None)
    with torch.no_grad():
        mel, _ = q.features(torch.from_numpy(speech_like(0.5, 3))[None], torch.tensor([8000]))
    x = q.quantize_input(mel).numpy()[0]
    write_input(cd / "input.q8", x)
    write_input(cd / "input_short.q8", x[:, :40], 31)
    (cd / "stamp").write_text(stamp)
