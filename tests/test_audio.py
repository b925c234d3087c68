import numpy as np
import pytest
import soundfile as sf
import torch

from intasr.audio import AudioError, MelFrontend, load_audio
from intasr.data import load_batch, read_librispeech


@pytest.fixture(scope="module")
def real_batch(test_other_dir):
    # Three utterances of different lengths, so two of them carry batch padding.
    utts = read_librispeech(test_other_dir)[:3]
    return load_batch(utts)


def _valid_max_diff(a, b, lengths):
    return max(float((a[i, :, :n] - b[i, :, :n]).abs().max()) for i, n in enumerate(lengths.tolist()))


@pytest.mark.nemo
def test_matches_nemo_preprocessor(real_batch):
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    audio, lengths = real_batch
    assert len(set(lengths.tolist())) == 3
    nemo = AudioToMelSpectrogramPreprocessor(features=64, n_fft=512).eval()
    ours = MelFrontend(features=64, n_fft=512).eval()
    ref, ref_len = nemo(input_signal=audio.clone(), length=lengths)
    out, out_len = ours(audio, lengths)
    assert out.dtype == torch.float32 and out_len.dtype == torch.int64
    assert out.shape == ref.shape and out.shape[-1] % 16 == 0
    assert torch.equal(out_len, ref_len)
    diff = _valid_max_diff(out, ref, out_len)
    print(f"MelFrontend vs NeMo max abs diff on valid frames: {diff:.3g}")
    assert diff < 1e-4
    assert torch.equal(out == 0, ref == 0)  # padded frames are pad_value in both

    # Buffers line up with NeMo's state-dict keys preprocessor.featurizer.{window,fb}.
    parent = torch.nn.Module()
    parent.featurizer = ours
    nemo_sd = nemo.state_dict()
    for key, value in parent.state_dict().items():
        assert key in ("featurizer.window", "featurizer.fb")
        assert value.shape == nemo_sd[key].shape
        assert torch.allclose(value, nemo_sd[key], atol=1e-6, rtol=0)


def test_from_config_ignores_target_and_warns_on_unknown():
    cfg = {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "normalize": "per_feature",
           "window_size": 0.02, "sample_rate": 16000, "window_stride": 0.01, "window": "hann", "features": 64,
           "n_fft": 512, "frame_splicing": 1, "dither": 1e-5, "stft_conv": False, "mystery": 1}
    with pytest.warns(UserWarning, match="mystery"):
        m = MelFrontend.from_config(cfg)
    assert m.fb.shape == (1, 64, 257) and m.window.shape == (320,) and m.hop_length == 160


def test_batch_padding_does_not_change_features(real_batch):
    audio, lengths = real_batch
    m = MelFrontend().eval()
    batched, blen = m(audio, lengths)
    i = int(lengths.argmin())
    alone, alen = m(audio[i : i + 1, : lengths[i]], lengths[i : i + 1])
    n = int(alen[0])
    assert n == int(blen[i])
    assert float((alone[0, :, :n] - batched[i, :, :n]).abs().max()) < 1e-5


def test_legacy_length_rule_and_seeded_dither(real_batch):
    audio, lengths = real_batch
    cur, leg = MelFrontend().eval(), MelFrontend(legacy=True).eval()
    assert cur.output_lengths(torch.tensor([16000, 16001, 16159])).tolist() == [100, 100, 100]
    assert leg.output_lengths(torch.tensor([16000, 16001, 16159])).tolist() == [100, 101, 101]
    _, cur_len = cur(audio, lengths)
    a, leg_len = leg(audio, lengths)
    assert torch.equal(leg_len, torch.ceil(lengths / 160).long())
    assert torch.equal(cur_len, lengths // 160)
    # Legacy dithers at eval time, reproducibly for a given seed / generator.
    b, _ = leg(audio, lengths)
    assert torch.equal(a, b)
    c, _ = leg(audio, lengths, generator=torch.Generator().manual_seed(123))
    assert not torch.equal(a, c)
    # The current front end never dithers in eval mode.
    assert torch.equal(cur(audio, lengths)[0], cur(audio, lengths)[0])


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resamples_to_16k(tmp_path, sr):
    t = np.arange(int(sr * 1.5)) / sr
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t)] * 2, axis=1)
    path = tmp_path / f"sine_{sr}.wav"
    sf.write(path, stereo, sr, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 24000
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / len(audio)
    assert abs(peak_hz - 1000) < 2


def test_bad_files_raise_audio_error_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    cases = {corrupt: "decode", empty: "empty", tmp_path / "missing.wav": "not found", nan: "NaN"}
    for path, problem in cases.items():
        with pytest.raises(AudioError, match=problem) as info:
            load_audio(path)
        assert path.name in str(info.value)


def test_long_multichannel_file_mixed_down_block_by_block(tmp_path):
    """More frames than one read block (2^20): the blockwise mix-down equals the mean of the
    channels over the whole file, and the length is kept."""
    rng = np.random.default_rng(1)
    x = (0.2 * rng.standard_normal((2**20 + 12345, 3))).astype(np.float32)
    sf.write(tmp_path / "three.wav", x, 16000, subtype="FLOAT")
    y = load_audio(tmp_path / "three.wav", 16000)
    assert y.dtype == np.float32 and y.shape == (x.shape[0],)
    np.testing.assert_array_equal(y, x.mean(axis=1))


def test_the_window_is_a_shape_on_the_meta_device_and_values_elsewhere():
    """load_model's size check builds the model on the meta device: the window is then only a
    shape (torch would compute it through its Python decompositions, ~1 s on first use); a real
    build holds NeMo's symmetric window."""
    with torch.device("meta"):
        meta = MelFrontend()
    assert meta.window.is_meta and meta.window.shape == (meta.win_length,)
    real = MelFrontend()
    assert torch.equal(real.window, torch.hann_window(real.win_length, periodic=False))


def test_importing_the_front_end_leaves_scipy_signal_for_resampling():
    """scipy.signal (~0.7 s to import) is loaded by the first resampling, not by every command."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; import intasr.audio as a; assert 'scipy.signal' not in sys.modules; "
            "y = a.resample(np.ones(441, np.float32), 44100, 16000); assert y.shape == (160,); "
            "assert 'scipy.signal' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
