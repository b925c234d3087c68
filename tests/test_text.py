import random

import jiwer
import numpy as np
import pytest
import torch

from intasr.text import (EN_CHARS, ErrorCounts, char_errors, ctc_greedy_decode, normalize_transcript,
                           word_errors, wer_summary)

BLANK = len(EN_CHARS)


def ids_of(s):
    return [EN_CHARS.index(c) for c in s]


def one_hot_logits(ids, n_classes=BLANK + 1, dtype=torch.float32):
    out = torch.zeros(1, len(ids), n_classes, dtype=dtype)
    out[0, torch.arange(len(ids)), torch.tensor(ids)] = 5
    return out


def test_vocabulary_matches_nemo_quartznet():
    assert len(EN_CHARS) == 28 and EN_CHARS[0] == " " and EN_CHARS[1] == "a"
    assert EN_CHARS[26] == "z" and EN_CHARS[27] == "'"


def test_normalize_transcript():
    assert normalize_transcript("HELLO,  World!\tIT'S  me ") == "hello world it's me"
    assert normalize_transcript("123 !!") == ""


def test_decode_collapses_repeats_and_keeps_blank_separated_repeats():
    h, e, l, o = ids_of("helo")
    ids = [h, h, e, BLANK, l, l, BLANK, l, o, o, BLANK]
    assert ctc_greedy_decode(one_hot_logits(ids), torch.tensor([len(ids)])) == ["hello"]


def test_decode_respects_lengths_and_empty_output():
    ids = ids_of("ab") + [BLANK] * 3
    logits = one_hot_logits(ids).repeat(3, 1, 1)
    assert ctc_greedy_decode(logits, torch.tensor([5, 1, 0])) == ["ab", "a", ""]
    assert ctc_greedy_decode(one_hot_logits([BLANK] * 4), [4]) == [""]


def test_decode_int_logits_channels_first_and_ids():
    ids = ids_of("it's a") + [BLANK]
    int_logits = one_hot_logits(ids, dtype=torch.int32) - 100  # negative ints, like requantized outputs
    assert ctc_greedy_decode(int_logits, [len(ids)]) == ["it's a"]
    assert ctc_greedy_decode(int_logits.transpose(1, 2), [len(ids)], time_axis=2) == ["it's a"]
    assert ctc_greedy_decode(torch.tensor([ids], dtype=torch.int16), [len(ids)]) == ["it's a"]


def test_decode_rejects_bad_ids():
    with pytest.raises(ValueError, match="class ids"):
        ctc_greedy_decode(torch.tensor([[BLANK + 1]]), [1])


def _random_sentence(rng, words):
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))


def test_word_and_char_errors_match_jiwer():
    rng = random.Random(0)
    vocab = ["the", "a", "cat", "sat", "on", "mat", "it's", "dog", "x"]
    for _ in range(200):
        ref, hyp = _random_sentence(rng, vocab), _random_sentence(rng, vocab)
        w = jiwer.process_words(ref, hyp)
        assert tuple(word_errors(ref, hyp)) == (w.substitutions + w.deletions + w.insertions, len(ref.split()))
        c = jiwer.process_characters(ref, hyp)
        assert char_errors(ref, hyp).errors == c.substitutions + c.deletions + c.insertions
    assert word_errors("", "a b") == ErrorCounts(2, 0)


def test_wer_summary_matches_jiwer_and_ci_is_deterministic():
    rng = random.Random(1)
    vocab = ["one", "two", "three", "four", "five"]
    refs = [_random_sentence(rng, vocab) for _ in range(30)]
    hyps = [r if i % 3 else _random_sentence(rng, vocab) for i, r in enumerate(refs)]
    s = wer_summary(refs, hyps, n_boot=500, seed=3)
    assert s["wer"] == pytest.approx(100 * jiwer.wer(refs, hyps))
    assert s["cer"] == pytest.approx(100 * jiwer.cer(refs, hyps))
    assert s["utterances"] == 30 and s["words"] == sum(len(r.split()) for r in refs)
    lo, hi = s["ci95"]
    assert lo <= s["wer"] <= hi and lo < hi
    assert wer_summary(refs, hyps, n_boot=500, seed=3)["ci95"] == s["ci95"]
    assert wer_summary(refs, hyps, n_boot=500, seed=4)["ci95"] != s["ci95"]


def test_wer_summary_rejects_empty_reference_and_mismatch():
    with pytest.raises(ValueError, match="reference 1 is empty"):
        wer_summary(["a b", "  "], ["a b", "c"])
    with pytest.raises(ValueError, match="2 references but 1"):
        wer_summary(["a", "b"], ["a"])


def test_perfect_hypotheses_give_zero():
    s = wer_summary(["a b c", "d"], ["a b c", "d"], n_boot=50)
    assert s["wer"] == 0 and s["cer"] == 0 and s["ci95"] == [0.0, 0.0]
    assert isinstance(s["wer"], float) and np.isfinite(s["ci95"]).all()
