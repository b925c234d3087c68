"""The row builders of text.py (per-speaker WER, spans) and synth.py (BatchNorm statistics of an
input), on hand-checkable inputs and a random QuartzNet-5x5."""

import copy

import pytest
import soundfile
import torch

from conftest import random_quartznet5x5, speech_like_audio

from intasr import synth
from intasr.data import load_dataset
from intasr.text import span_text, speaker_of, wer_by, with_word_errors


def test_word_errors_per_speaker_pool_words():
    transcripts = [{"id": "19-198-0000", "ref": "a cat sat", "hyp": "a cat sat"},
                   {"id": "19-198-0001", "ref": "on the mat", "hyp": "on a mat now"},
                   {"id": "7-11-0000", "ref": "hello world", "hyp": "world"}]
    rows = with_word_errors(transcripts)
    assert [r["speaker"] for r in rows] == ["19", "19", "7"] and speaker_of("1234-5-6") == "1234"
    assert [(r["words"], r["word_errors"]) for r in rows] == [(3, 0), (3, 2), (2, 1)]
    assert rows[1]["hyp"] == "on a mat now"  # the transcript's own fields are kept
    by = wer_by(rows, "speaker")
    assert [b["speaker"] for b in by] == ["19", "7"]
    assert by[0] == {"speaker": "19", "words": 6, "word_errors": 2, "WER %": 100 * 2 / 6, "utterances": 2}
    assert by[1]["WER %"] == 50.0 and by[1]["utterances"] == 1


def test_span_text():
    assert span_text([1.21, 1.24]) == "1.2"
    assert span_text([2.0, 3.46]) == "2.0-3.5"
    assert span_text([5.0, 5.06], fmt="{:.2f}") == "5.00-5.06"


@pytest.fixture(scope="module")
def model():
    return random_quartznet5x5(speech_like_audio((1.2, 0.8), seed=0))


def test_batchnorm_stats_match_the_running_statistics_they_were_set_to(model):
    mel = torch.randn(2, 64, 48, generator=torch.Generator().manual_seed(0))
    stats = synth.batchnorm_input_stats(model, mel)
    assert list(stats) == [name for name, _ in model.batchnorms()]
    matched = copy.deepcopy(model)
    with torch.no_grad():
        for name, bn in matched.batchnorms():
            mean, std = stats[name]
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(std**2)
    # setting the statistics changes what later layers see, so measure again; the first BatchNorm's
    # input is the same, and its statistics now are those of the input
    restats = synth.batchnorm_input_stats(matched, mel)
    recorded = {"self": restats}
    rows = synth.batchnorm_match_rows(matched, recorded)
    assert len(rows) == len(model.batchnorms()) and [r["layer index"] for r in rows] == list(range(len(rows)))
    assert all(r["KL term"] >= -1e-6 for r in rows)
    first = rows[0]  # the first BatchNorm's input does not depend on any running statistics
    assert first["KL term"] == pytest.approx(0.0, abs=1e-6)
    assert first["std ratio (median over channels)"] == pytest.approx(1.0, abs=1e-5)
    layer = rows[0]["layer"]
    channel_rows = synth.batchnorm_channel_rows(matched, recorded, [layer])
    bn = dict(matched.batchnorms())[layer]
    assert len(channel_rows) == bn.num_features
    assert all(r["batch mean"] == pytest.approx(r["running mean"], abs=1e-5) for r in channel_rows)


def test_real_feature_crops_skip_short_utterances(model, tmp_path):
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    audio, lengths = speech_like_audio((0.5, 1.5, 1.2), seed=2)
    for i, n in enumerate(lengths.tolist()):
        soundfile.write(chapter / f"19-198-{i:04d}.flac", audio[i, :n].numpy(), 16000)
    (chapter / "19-198.trans.txt").write_text("".join(f"19-198-{i:04d} A B\n" for i in range(3)))
    utts = load_dataset(tmp_path)
    crops = synth.real_feature_crops(model, utts, n=4, frames=100)  # 0.5 s is too short for 100 + 16 frames
    assert crops.shape == (2, 64, 100)
    with torch.inference_mode():
        from intasr.data import load_batch

        mel, _ = model.features(*load_batch([utts[1]]))
    assert torch.equal(crops[0], mel[0, :, :100])
