"""intasr.selection: choosing recipes label-free, against the float model's own transcripts."""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from intasr import selection
from intasr.data import read_librispeech
from intasr.evaluate import evaluate
from intasr.recipe_runs import DEFAULTS, KEY, RecipeRuns, settings_of
from intasr.results_file import ResultsFile


def _untranscribed_folder(root, n: int):
    """A LibriSpeech-shaped folder of `n` short noise files and no transcripts."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / str(10 + i % 3) / "7"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{10 + i % 3}-7-{i:04d}.flac", (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000)
    return root


def test_the_selection_set_is_seeded_and_skips_the_real_calibration_head(tmp_path):
    root = _untranscribed_folder(tmp_path / "train", 30)
    listing = [u.id for u in read_librispeech(root, require_text=False)]
    a = selection.selection_set(root, size=10, skip=12)
    b = selection.selection_set(root, size=10, skip=12)
    ids = [u.id for u in a]
    assert ids == [u.id for u in b] and len(set(ids)) == 10
    assert not set(ids) & set(listing[:12])                      # nothing that real calibration reads
    assert ids == [i for i in listing if i in ids]               # in the listing's order
    assert ids != [u.id for u in selection.selection_set(root, size=10, skip=12, seed=1)]


def test_too_few_utterances_name_the_folder(tmp_path):
    root = _untranscribed_folder(tmp_path / "few", 5)
    with pytest.raises(ValueError, match=r"few: 5 utterances; selection needs 4 after the first 3"):
        selection.selection_set(root, size=4, skip=3)


def test_the_float_model_agrees_with_itself_and_not_with_other_references(small_quartznet, test_other_dir, tmp_path):
    utts = read_librispeech(test_other_dir)[:3]
    model_file = tmp_path / "model.bin"
    model_file.write_bytes(b"stands for the checkpoint: its hash keys the cache")
    refs = selection.fp32_transcripts(small_quartznet, model_file, utts, cache_dir=tmp_path / "cache", batch_size=2)
    words = sum(len(r.split()) for r in refs)
    assert words > 0
    same = evaluate(small_quartznet, utts, batch_size=2, progress=False, references=refs)
    assert (same["word_errors"], same["words"], same["wer"]) == (0, words, 0.0)
    other = evaluate(small_quartznet, utts, batch_size=2, progress=False, references=[r + " extra" for r in refs])
    assert other["word_errors"] == len(utts) and other["words"] == words + len(utts)
    with pytest.raises(ValueError, match="2 reference transcripts for 3 utterances"):
        evaluate(small_quartznet, utts, progress=False, references=refs[:2])
    import dataclasses

    untranscribed = [dataclasses.replace(u, text=None) for u in utts]   # the selection set has no text
    assert evaluate(small_quartznet, untranscribed, progress=False, references=refs)["word_errors"] == 0
    with pytest.raises(ValueError, match="have no transcript"):
        evaluate(small_quartznet, untranscribed, progress=False)


def test_float_transcripts_are_cached_by_model_file_and_utterances(small_quartznet, test_other_dir, tmp_path, monkeypatch):
    utts = read_librispeech(test_other_dir)[:2]
    model_file = tmp_path / "model.bin"
    model_file.write_bytes(b"one")
    first = selection.fp32_transcripts(small_quartznet, model_file, utts, cache_dir=tmp_path)

    def no_decoding(*args, **kwargs):
        raise AssertionError("transcribed again although cached")

    monkeypatch.setattr(selection, "transcribe", no_decoding)
    assert selection.fp32_transcripts(small_quartznet, model_file, utts, cache_dir=tmp_path) == first
    with pytest.raises(AssertionError, match="transcribed again"):   # another utterance list: another entry
        selection.fp32_transcripts(small_quartznet, model_file, utts[:1], cache_dir=tmp_path)


def test_rows_name_their_criterion_and_older_rows_read_as_test_rows(tmp_path):
    run = RecipeRuns(model="m.nemo", data="d", out=str(tmp_path / "r.csv"), criterion=selection.CRITERION)
    key = settings_of(run, "m", 0, 4, 8, None)
    assert key["criterion"] == selection.CRITERION
    older = pd.DataFrame([{k: v for k, v in settings_of(RecipeRuns(model="m", data="d", out="o"), "m", 0, 4, 8, None).items()
                           if k != "criterion"}])
    test_key = settings_of(RecipeRuns(model="m", data="d", out="o"), "m", 0, 4, 8, None)
    assert ResultsFile.has_settings(older, {k: test_key[k] for k in KEY}, DEFAULTS)
    assert not ResultsFile.has_settings(older, {k: key[k] for k in KEY}, DEFAULTS)


def test_an_unknown_criterion_is_refused(tmp_path, monkeypatch):
    from intasr import recipe_runs

    monkeypatch.setattr(recipe_runs, "load_model", lambda path: object())
    with pytest.raises(ValueError, match="criterion 'labels'"):
        recipe_runs.run_recipes(RecipeRuns(model="m.nemo", data="d", out=str(tmp_path / "r.csv"), criterion="labels"))


def test_by_default_the_whole_pool_past_the_head_selects(tmp_path):
    root = _untranscribed_folder(tmp_path / "train", 9)
    listing = [u.id for u in read_librispeech(root, require_text=False)]
    assert [u.id for u in selection.selection_set(root, skip=4)] == listing[4:]
    with pytest.raises(ValueError, match=r"9 utterances; selection needs some after the first 9"):
        selection.selection_set(root, skip=9)


def test_each_default_recipe_is_the_label_free_choice():
    """The committed selection (tools/select_recipes.sh) chose each width's default: intasr quantize's
    defaults are what `choose` reads off results/recipe_selection.csv, and every row of that file was
    scored against float transcripts, not test transcripts."""
    from pathlib import Path

    from intasr.quantize import default_recipe

    rows = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "recipe_selection.csv")
    assert set(rows.criterion) == {selection.CRITERION}
    picked = selection.choose(rows)
    assert sorted(picked.w_bits) == [4, 6, 8]
    for r in picked.itertuples():
        assert r.recipe == default_recipe(int(r.w_bits)), f"W{r.w_bits}: chose {r.candidate}"


def test_each_conformer_default_is_the_label_free_choice():
    """The same for the hama Conformer (tools/select_conformer_recipes.sh, issue 30): the recipe that
    `intasr quantize` gives it at each width, with its default 8-bit parts, is what `choose` reads
    off results/conformer_recipe_selection.csv, whose rows were all scored against float transcripts."""
    from pathlib import Path

    from intasr.quantize import RECIPES, default_recipe

    rows = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "conformer_recipe_selection.csv")
    assert set(rows.criterion) == {selection.CRITERION} and set(rows.metric) == {"per"}
    picked = selection.choose(rows)
    assert sorted(picked.w_bits) == [4, 6, 8]
    for r in picked.itertuples():
        assert r.recipe == default_recipe(int(r.w_bits), conformer=True), f"W{r.w_bits}: chose {r.candidate}"
    chosen4 = rows[(rows.w_bits == 4) & (rows.apply(selection.recipe_label, axis=1) == picked[picked.w_bits == 4]
                                         .candidate.iloc[0])]
    assert set(chosen4.edge_parts) == {"+".join(RECIPES["grouped"]["edge_parts"])}


def test_the_selection_set_shares_nothing_with_the_test_set(train_clean_dir, test_other_dir):
    from pathlib import Path

    from intasr.provenance import eval_set_fingerprint

    chosen = selection.selection_set(train_clean_dir)
    test = read_librispeech(test_other_dir)
    assert not {u.id for u in chosen} & {u.id for u in test}
    rows = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "recipe_selection.csv")
    assert set(rows.eval_sha256) == {eval_set_fingerprint(chosen)["sha256"]}   # the rows read this set


def test_rows_measured_on_this_model_file_and_evaluation_set(test_other_dir, tmp_path, monkeypatch):
    from pathlib import Path

    from intasr.provenance import eval_set_fingerprint

    csv = Path(__file__).resolve().parents[1] / "results" / "beyond_adaround.csv"
    rows = pd.read_csv(csv).dropna(subset=["model_sha256"])
    utts = read_librispeech(test_other_dir)
    other = tmp_path / "other.nemo"
    other.write_bytes(b"another model")
    assert selection.rows_measured_on(csv, other, utts) is None
    assert selection.rows_measured_on(tmp_path / "none.csv", other, utts) is None
    fp = eval_set_fingerprint(utts)["sha256"]
    if fp in set(rows.eval_sha256):   # the committed rows were measured on this test-other folder
        real_hash = rows.model_sha256.iloc[0]
        monkeypatch.setattr(selection, "file_sha256", lambda p: real_hash)   # stands for the committed model file
        got = selection.rows_measured_on(csv, other, utts)
        assert len(got) == ((rows.model_sha256 == real_hash) & (rows.eval_sha256 == fp)).sum() > 0
        assert len(selection.rows_measured_on(csv, other)) == (rows.model_sha256 == real_hash).sum() >= len(got)


def test_parts_table_keeps_the_candidates_that_differ_only_in_their_8_bit_parts():
    base = "learned rounding (centered, on float inputs, 100 steps/conv, a multiplier per 16 weights"
    t = pd.DataFrame([
        dict(w_bits=4, candidate=base + ", subsampling and output and attention at 8 bits)", size_mb=1.19, seeds=3,
             errors=570.0, per_seed="a", chosen=True, test_wer=16.4, test_delta=0.8, test_errors="x", words=25000),
        dict(w_bits=4, candidate=base + ")", size_mb=1.01, seeds=3, errors=650.0, per_seed="b", chosen=False,
             test_wer=16.3, test_delta=0.7, test_errors="y", words=25000),
        dict(w_bits=4, candidate=base + ", depthwise convs at 8 bits)", size_mb=1.05, seeds=3, errors=575.0,
             per_seed="c", chosen=False, test_wer=16.0, test_delta=0.4, test_errors="z", words=25000),
        dict(w_bits=4, candidate="`bc`", size_mb=0.96, seeds=1, errors=1246.0, per_seed="d", chosen=False,
             test_wer=float("nan"), test_delta=float("nan"), test_errors="", words=25000),
        dict(w_bits=6, candidate=base + ")", size_mb=1.4, seeds=3, errors=350.0, per_seed="e", chosen=True,
             test_wer=15.4, test_delta=-0.2, test_errors="w", words=25000)])
    parts = selection.parts_table(t)
    assert list(parts.size_mb) == [1.01, 1.19]   # cheapest first; no depthwise, no other recipe, no other width
    v = selection.parts_values(parts, t)
    assert v == {"edge_cheapest": "1.01", "edge_chosen_mb": "1.19", "edge_spread": "570-650", "edge_words": "25,000"}
    assert selection.parts_table(None).empty
    assert set(selection.parts_values(parts.iloc[:1], t).values()) == {"(not measured)"}


def test_a_model_without_a_file_gets_no_rows_and_a_note_naming_the_path(test_other_dir, tmp_path):
    # a chapter that built its model in memory (no file to hash) shows no selection and says why
    from pathlib import Path

    csv = Path(__file__).resolve().parents[1] / "results" / "conformer_recipe_selection.csv"
    missing = tmp_path / "not_built.nemo"
    grid = pd.DataFrame(columns=["error_rate", "unit_errors"])
    table, notes = selection.model_selection(csv, csv, missing, read_librispeech(test_other_dir), grid, 15.6)
    assert table is None
    assert len(notes) == 1 and str(missing) in notes[0] and "no such model file" in notes[0]
    assert set(selection.selection_prose(table, conformer=True)) == {"w4", "w6", "w8"}
