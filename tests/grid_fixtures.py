"""A tiny float ConvASR and a tiny LibriSpeech-shaped folder of synthetic speech-like audio: what
the grid tests run on (no ../shared needed, seconds per cell)."""

from pathlib import Path

import soundfile as sf
import torch

from conftest import fill_bn_statistics, randomize_weights, speech_like_audio

TRANSCRIPTS = ["a cat sat", "the dog ran far", "one two", "we go home now"]


def tiny_config():
    from intasr.models.configs import block_config, convasr_config

    return convasr_config([block_config(32, 1, 11, stride=2, residual=False), block_config(32, 2, 13),
                   block_config(48, 1, 1, residual=False, separable=False)], 48)


def tiny_model_and_data(root: Path, seed: int = 5) -> tuple[Path, Path]:
    """(tiny.nemo, a LibriSpeech folder of 4 utterances) under root."""
    from intasr.models import ConvASR, save_model

    audio, lengths = speech_like_audio(seconds=(1.2, 0.9, 1.0, 0.8), seed=seed)
    data = root / "LibriSpeech" / "tiny"
    chapter = data / "1" / "2"
    chapter.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(TRANSCRIPTS):
        sf.write(chapter / f"1-2-{i:04d}.flac", audio[i, : int(lengths[i])].numpy(), 16000)
        lines.append(f"1-2-{i:04d} {text.upper()}")
    (chapter / "1-2.trans.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    model = ConvASR(tiny_config()).eval()
    randomize_weights(model, seed=seed)
    with torch.no_grad():
        mel, mel_len = model.features(audio, lengths)
    fill_bn_statistics(model.encoder, mel, mel_len)
    return save_model(model, root / "tiny.nemo"), data
