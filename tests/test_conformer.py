"""Conformer-CTC: equivalence with NeMo's ConformerEncoder + ConvASRDecoder, batching, `.nemo` IO
(char and BPE, NeMo-written and NeMo-restored), SentencePiece decoding, malformed archives."""

import io
import tarfile

import pytest
import torch
from torch import nn

from conftest import fill_bn_statistics

from intasr.models import (CheckpointError, ConformerCTC, config_for, conformer_ctc_config, load_model, read_nemo,
                             save_model, write_nemo)
from intasr.models.checkpoint import build_model
from intasr.models.conformer import ConvSubsampling, rel_shift
from intasr.models.convasr import frame_mask
from intasr.tokenizer import SentencePieceTokenizer, ctc_greedy_decode_bpe, nemo_tokenizer_files

TEXT = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
        "how much wood would a woodchuck chuck if a woodchuck could chuck wood",
        "peter piper picked a peck of pickled peppers", "a stitch in time saves nine",
        "all that glitters is not gold", "it was the best of times it was the worst of times"]


@pytest.fixture(scope="module")
def sp_tokenizer() -> SentencePieceTokenizer:
    """A tiny BPE SentencePiece model trained here, in memory, in well under a second."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 10), model_writer=buf, vocab_size=48,
                                   model_type="bpe", character_coverage=1.0, minloglevel=2)
    return SentencePieceTokenizer(buf.getvalue())


@pytest.fixture(scope="module")
def short_batch(real_audio_batch):
    """The 3 real utterances cropped to 3.0 / 2.3 / 1.6 s: a padded batch that keeps tests fast."""
    audio, lengths = real_audio_batch
    lengths = torch.minimum(lengths, torch.tensor([48000, 36800, 25600]))
    audio = audio[:, : int(lengths.max())].clone()
    audio[~frame_mask(lengths, audio.shape[1])] = 0.0
    return audio, lengths


def randomize(module: nn.Module, seed: int) -> None:
    """Random but well-scaled weights: matrices ~ N(0, 1/fan_in); vectors (biases, LayerNorm and
    BatchNorm affine, pos_bias_u/v) around their defaults, so every term of the network matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("preprocessor"):
                continue
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            else:
                base = 1.0 if name.endswith("weight") else 0.0  # LayerNorm / BatchNorm gamma
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))


def random_model(cfg: dict, mel_batch, seed: int = 0) -> ConformerCTC:
    """Random weights, BatchNorm running statistics from a training-mode pass over real features."""
    torch.manual_seed(seed)
    model = ConformerCTC(cfg)
    randomize(model, seed)
    mel, mel_len = mel_batch
    fill_bn_statistics(model.encoder, mel, mel_len)
    bn = model.batchnorms()[0][1]
    assert bn.running_var.std() > 0 and bn.running_mean.abs().max() > 0
    return model


def _valid(logp: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return logp[frame_mask(lengths, logp.shape[1])]


def _nemo_modules(cfg: dict):
    from nemo.collections.asr.modules import ConformerEncoder, ConvASRDecoder

    enc = ConformerEncoder(**{k: v for k, v in cfg["encoder"].items() if k != "_target_"})
    dec = ConvASRDecoder(**{k: v for k, v in cfg["decoder"].items() if k != "_target_"})
    return enc.eval(), dec.eval()


# --- NeMo equivalence -------------------------------------------------------------------------

@pytest.mark.nemo
@pytest.mark.parametrize("size,variant", [
    ("small", {}),
    ("small", {"subsampling": "dw_striding", "self_attention_model": "abs_pos", "xscaling": False,
               "untie_biases": False, "n_layers": 3}),
    ("small", {"untie_biases": False, "subsampling_factor": 8, "feat_out": 96, "n_layers": 3}),
    ("large", {}),
])
def test_matches_nemo(size, variant, short_batch):
    """float64, random weights, real BN statistics, a padded batch of 3 real utterances:
    NeMo's state dict loads into ours (strict) and ours into NeMo's, same log-probs and lengths."""
    torch.set_num_threads(1)
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    cfg = conformer_ctc_config(size, vocab_size=128, **variant)
    ours = ConformerCTC(cfg)
    audio, lengths = short_batch
    with torch.no_grad():
        mel, mel_len = ours.features(audio, lengths)

    # the front end: NeMo's Conformer preprocessor (window 0.025, 80 mels, pad_to 0) vs ours
    if size == "small" and not variant:
        pre = AudioToMelSpectrogramPreprocessor(**{k: v for k, v in cfg["preprocessor"].items()
                                                   if k != "_target_"}).eval()
        with torch.no_grad():
            ref_mel, ref_mel_len = pre(input_signal=audio, length=lengths)
        assert torch.equal(mel_len, ref_mel_len) and mel.shape == ref_mel.shape
        valid = frame_mask(mel_len, mel.shape[-1])[:, None, :].expand_as(mel)
        assert (mel - ref_mel)[valid].abs().max() < 1e-4

    # NeMo -> ours: NeMo's (randomized) state dict, keys identical, strict load
    nemo_enc, nemo_dec = _nemo_modules(cfg)
    randomize(nemo_enc, seed=1)
    randomize(nemo_dec, seed=2)
    fill_bn_statistics(nemo_enc, audio_signal=mel, length=mel_len)
    sd = {**{f"encoder.{k}": v for k, v in nemo_enc.state_dict().items()},
          **{f"decoder.{k}": v for k, v in nemo_dec.state_dict().items()}}
    assert set(sd) == {k for k in ours.state_dict() if not k.startswith("preprocessor.")}
    ours.load_state_dict(sd, strict=False)
    # and ours -> NeMo: the same tensors back through NeMo's own load_state_dict(strict=True)
    nemo_enc.load_state_dict({k[8:]: v for k, v in ours.state_dict().items() if k.startswith("encoder.")})
    nemo_dec.load_state_dict({k[8:]: v for k, v in ours.state_dict().items() if k.startswith("decoder.")})

    ours, nemo_enc, nemo_dec = ours.double(), nemo_enc.double(), nemo_dec.double()
    mel64 = mel.double()
    with torch.no_grad():
        enc, ref_len = nemo_enc(audio_signal=mel64, length=mel_len)
        ref = nemo_dec(encoder_output=enc)
        logits, out_len = ours.forward_features(mel64, mel_len)
    assert torch.equal(out_len, ref_len)
    assert out_len.tolist() != [out_len[0].item()] * 3, "the batch must be padded"
    logp = ConformerCTC.log_probs(logits)
    diff = (_valid(logp, out_len) - _valid(ref, ref_len)).abs().max().item()
    print(f"{size} {variant}: max |log-prob diff| = {diff:.3g}")
    assert diff < 1e-4
    assert _valid(ref, ref_len).std() > 0.1  # a degenerate (constant) output would prove nothing


@pytest.mark.nemo
@pytest.mark.parametrize("kind", ["striding_conv1d", "dw_striding_conv1d"])
def test_conv1d_subsampling_matches_nemo_layers(kind):
    """NeMo 3.0's own forward for the Conv1d subsamplings is broken (its masked sequential is
    called without lengths), so compare with its layers run as a plain sequence, one unpadded
    utterance (where masking changes nothing); lengths with NeMo's calc_length."""
    from nemo.collections.asr.parts.submodules.subsampling import ConvSubsampling as NemoSub, calc_length

    torch.manual_seed(0)
    nemo = NemoSub(subsampling=kind, subsampling_factor=4, feat_in=80, feat_out=64, conv_channels=48,
                   activation=nn.ReLU()).eval()
    ours = ConvSubsampling(kind, 4, 80, 64, 48).eval()
    ours.load_state_dict(nemo.state_dict(), strict=True)
    x = torch.randn(1, 101, 80)
    with torch.no_grad():
        ref = nn.Sequential.forward(nemo.conv, x.transpose(1, 2)).transpose(1, 2)
        out, out_len = ours(x, torch.tensor([101]))
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
    assert int(out_len[0]) == int(calc_length(torch.tensor([101]), 4, 5, 2, False, 2)[0]) == ref.shape[1]


# --- our model on its own ---------------------------------------------------------------------

def test_rel_shift_is_relative_distance():
    t = 5
    pos = torch.arange(t - 1, -t, -1).double()                  # positions T-1 .. -(T-1)
    x = pos.expand(2, 3, t, 2 * t - 1).clone()                  # score = the position itself
    out = rel_shift(x)
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    assert torch.equal(out[0, 0], (i - j).double())


def test_batch_and_padding_invariance(short_batch):
    """Each utterance alone gives what it gives inside the padded batch (masks in subsampling,
    attention and the conv module)."""
    torch.set_num_threads(1)
    cfg = conformer_ctc_config("small", n_layers=4)
    ours = ConformerCTC(cfg)
    audio, lengths = short_batch
    with torch.no_grad():
        mel, mel_len = ours.features(audio, lengths)
    ours = random_model(cfg, (mel, mel_len)).double()
    with torch.no_grad():
        logits, out_len = ours(audio.double(), lengths)
        for b in range(audio.shape[0]):
            alone, alone_len = ours(audio[b:b + 1, : lengths[b]].double(), lengths[b:b + 1])
            n = int(alone_len[0])
            assert n == int(out_len[b])
            assert (alone[0, :, :n] - logits[b, :, :n]).abs().max() < 1e-9


def test_configs_and_sizes():
    expect = {"small": (176, 16, 4, 13.0), "medium": (256, 18, 4, 30.0), "large": (512, 18, 8, 121.0)}
    for size, (d, layers, heads, mparams) in expect.items():
        cfg = config_for(f"conformer_ctc_{size}")
        enc = cfg["encoder"]
        assert (enc["d_model"], enc["n_layers"], enc["n_heads"]) == (d, layers, heads)
        assert cfg["preprocessor"]["window_size"] == 0.025 and cfg["preprocessor"]["features"] == 80
        assert cfg["preprocessor"]["pad_to"] == 0
        with torch.device("meta"):
            model = build_model(cfg)
        assert isinstance(model, ConformerCTC)
        n = sum(p.numel() for p in model.parameters() if p.device.type == "meta") / 1e6
        assert abs(n / mparams - 1) < 0.02, (size, n)  # NeMo's table: 13M, 30M, 121M (rounded)
        assert len(model.batchnorms()) == layers
    with pytest.raises(ValueError, match="att_context_size"):
        ConformerCTC(conformer_ctc_config("small", n_layers=1, att_context_size=[64, 0]))
    with pytest.raises(ValueError, match="conv_norm_type"):
        ConformerCTC(conformer_ctc_config("small", n_layers=1, conv_norm_type="layer_norm"))


# --- tokenizer -----------------------------------------------------------------------------------

def test_bpe_greedy_decode(sp_tokenizer):
    tok = sp_tokenizer
    text = "the best of times"
    ids = tok.encode(text)
    blank = tok.vocab_size
    frames = []
    for k in ids:   # each token twice, a blank between tokens, and a repeated token kept by a blank
        frames += [k, k, blank]
    frames += [ids[-1], blank]
    logits = torch.full((1, len(frames), tok.vocab_size + 1), -5.0)
    logits[0, torch.arange(len(frames)), torch.tensor(frames)] = 5.0
    decoded = ctc_greedy_decode_bpe(logits, torch.tensor([len(frames)]), tok)[0]
    assert decoded == tok.decode(ids + [ids[-1]])
    assert decoded.startswith(text)
    # and the labels route (evaluate.py's "".join of labels) gives the same words
    cfg = conformer_ctc_config("small", n_layers=1, vocabulary=tok.vocabulary)
    model = ConformerCTC(cfg, tokenizer=tok)
    from intasr.text import ctc_greedy_decode

    via_labels = ctc_greedy_decode(logits, torch.tensor([len(frames)]), model.labels)[0]
    assert via_labels.split() == decoded.split()
    with pytest.raises(ValueError, match="tokenizer"):
        ConformerCTC(conformer_ctc_config("small", n_layers=1, vocab_size=tok.vocab_size), tokenizer=tok)


# --- .nemo IO -----------------------------------------------------------------------------------

def _outputs(model, batch):
    with torch.no_grad():
        return model(*batch)


def test_roundtrip_char_and_bpe(short_batch, sp_tokenizer, tmp_path):
    torch.set_num_threads(1)
    batch = (short_batch[0][:2, :16000], torch.tensor([16000, 12000]))
    # char
    char = ConformerCTC(conformer_ctc_config("small", bpe=False, n_layers=2))
    randomize(char, 3)
    back = load_model(save_model(char, tmp_path / "char.nemo"))
    assert isinstance(back, ConformerCTC) and back.tokenizer is None and back.labels == char.labels
    for x, y in zip(_outputs(char, batch), _outputs(back, batch)):
        assert torch.equal(x, y)
    # BPE: the tokenizer travels inside the archive
    cfg = conformer_ctc_config("small", n_layers=2, vocabulary=sp_tokenizer.vocabulary,
                               subsampling="dw_striding")
    bpe = ConformerCTC(cfg, tokenizer=sp_tokenizer)
    randomize(bpe, 4)
    path = save_model(bpe, tmp_path / "bpe.nemo")
    with tarfile.open(path) as tar:
        assert {"./tokenizer.model", "./vocab.txt", "./tokenizer.vocab"} <= set(tar.getnames())
    back = load_model(path)
    assert back.tokenizer is not None and back.tokenizer.model_bytes == sp_tokenizer.model_bytes
    assert back.config["tokenizer"]["model_path"] == "nemo:tokenizer.model"
    (x, xl), (y, yl) = _outputs(bpe, batch), _outputs(back, batch)
    assert torch.equal(x, y) and torch.equal(xl, yl)
    assert back.decode(y, yl) == ctc_greedy_decode_bpe(x, xl, sp_tokenizer, time_axis=2)
    # a model without a tokenizer (placeholder pieces) round-trips too
    plain = ConformerCTC(conformer_ctc_config("small", n_layers=1, vocab_size=16))
    assert load_model(save_model(plain, tmp_path / "plain.nemo")).tokenizer is None


@pytest.mark.nemo
def test_nemo_bpe_archive_both_ways(sp_tokenizer, short_batch, tmp_path):
    """A .nemo written by NeMo's EncDecCTCModelBPE (hash-prefixed tokenizer members) loads here,
    and the one we write back restores in NeMo; all three give the same log-probs."""
    torch.set_num_threads(1)
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from omegaconf import OmegaConf

    files, _ = nemo_tokenizer_files(sp_tokenizer)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cfg = conformer_ctc_config("small", n_layers=2)
    cfg["tokenizer"] = {"dir": str(tmp_path), "type": "bpe"}
    cfg["decoder"].update(vocabulary=[], num_classes=-1)
    nemo = EncDecCTCModelBPE(cfg=OmegaConf.create(cfg)).eval()
    randomize(nemo, 5)
    nemo.save_to(str(tmp_path / "nemo.nemo"))
    with tarfile.open(tmp_path / "nemo.nemo") as tar:
        assert any(n.endswith("_tokenizer.model") and n != "./tokenizer.model" for n in tar.getnames())

    ours = load_model(tmp_path / "nemo.nemo")
    assert ours.vocabulary == sp_tokenizer.vocabulary
    back = EncDecCTCModelBPE.restore_from(str(save_model(ours, tmp_path / "ours.nemo")), map_location="cpu").eval()
    audio, lengths = short_batch
    with torch.no_grad():
        ref, ref_len, _ = nemo(input_signal=audio, input_signal_length=lengths)
        logits, out_len = ours(audio, lengths)
        again, again_len, _ = back(input_signal=audio, input_signal_length=lengths)
    assert torch.equal(out_len, ref_len) and torch.equal(again_len, ref_len)
    assert (_valid(ConformerCTC.log_probs(logits), out_len) - _valid(ref, ref_len)).abs().max() < 1e-4
    assert torch.equal(_valid(again, ref_len), _valid(ref, ref_len))


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_malformed_conformer_archives(sp_tokenizer, tmp_path):
    import yaml

    cfg = conformer_ctc_config("small", n_layers=1, vocabulary=sp_tokenizer.vocabulary)
    model = ConformerCTC(cfg, tokenizer=sp_tokenizer)
    good = save_model(model, tmp_path / "good.nemo")
    config, sd, files = read_nemo(good)

    def archive(name, config=config, sd=sd, files=files):
        return write_nemo(tmp_path / name, config, sd, files)

    # weights of another size
    other = ConformerCTC(conformer_ctc_config("small", n_layers=2, vocabulary=sp_tokenizer.vocabulary))
    with pytest.raises(CheckpointError, match="shape.nemo.*do not match"):
        load_model(archive("shape.nemo", sd=other.state_dict()))
    # the tokenizer the config names is missing
    with pytest.raises(CheckpointError, match="notok.nemo.*tokenizer.model"):
        load_model(archive("notok.nemo", files={}))
    # the tokenizer bytes are garbage
    with pytest.raises(CheckpointError, match="garbage.nemo.*SentencePiece"):
        load_model(archive("garbage.nemo", files={**files, "tokenizer.model": b"\x00not a proto" * 50}))
    # the tokenizer does not fit the decoder
    wrong = dict(config, decoder=dict(config["decoder"], vocabulary=[f"<{i}>" for i in range(48)]))
    with pytest.raises(CheckpointError, match="vocab.nemo"):
        load_model(archive("vocab.nemo", config=wrong))
    # an option that changes inference and is not implemented
    limited = dict(config, encoder=dict(config["encoder"], att_context_size=[32, 0]))
    with pytest.raises(CheckpointError, match="limited.nemo.*att_context_size"):
        load_model(archive("limited.nemo", config=limited))
    # an unknown encoder
    alien = dict(config, encoder=dict(config["encoder"], _target_="nemo.collections.asr.modules.RNNEncoder"))
    with pytest.raises(CheckpointError, match="alien.nemo.*RNNEncoder"):
        load_model(archive("alien.nemo", config=alien))
    # a tokenizer member that climbs out of the archive
    evil = tmp_path / "evil.nemo"
    buf = io.BytesIO()
    torch.save(sd, buf)
    _tar(evil, {"model_config.yaml": yaml.safe_dump(config).encode(), "model_weights.ckpt": buf.getvalue(),
                "../tokenizer.model": sp_tokenizer.model_bytes})
    with pytest.raises(CheckpointError, match="escapes"):
        load_model(evil)
    assert not (tmp_path.parent / "tokenizer.model").exists()
