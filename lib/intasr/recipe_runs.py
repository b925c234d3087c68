"""Beyond-the-paper runs of one recipe setting each (tools/run_adaround.py): quantize zero-shot
(synthetic calibration as the grid makes it, or real audio as a reference) with learned rounding,
bias correction, equalization, edge widths, group multipliers or a size budget -> evaluate ->
one tidy row per (seed, W/A, budget), appended through the resumable ``ResultsFile``.
``criterion``: "test" scores against the transcripts of `data`; "fp32-agreement" scores, label-free,
against the float model's own transcripts of an untranscribed selection set (``selection``), the
criterion that chooses the default recipes without the transcripts that report them.

A row is found again by its settings (``KEY``; these files have no cell_key), so a rerun skips
the settings already measured; ``DEFAULTS`` are the settings of rows written before a column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .calibration import calibration_batches
from .data import load_dataset
from .evaluate import evaluate
from .experiments import bops, model_size_mb
from .models.checkpoint import load_model
from .options import SYNTH_DEFAULTS
from .provenance import provenance
from .quantize import Recipe, is_conformer, quantize, recipe_of
from .results_file import ResultsFile
from .selection import CRITERION, SELECTION_SIZE, fp32_transcripts, selection_set

COLUMNS = ["model", "w_bits", "a_bits", "calibration", "seed", "observer", "weight_method", "bias_correction", "wer",
           "cer", "words", "word_errors", "utterances", "ci95_lo", "ci95_hi", "size_mb", "bops_t", "eval_seconds",
           "calib_seconds", "depthwise_bits", "rounding", "adaround_iterations", "size_budget_mb",
           "synth_iterations", "synth_seconds", "adaround_centered", "recipe", "adaround_symmetric",
           "adaround_scale_search", "edge_bits", "adaround_relu_aware", "equalize", "adaround_block_iterations",
           "weight_group", "criterion", "metric", "edge_parts"]
KEY = ["model", "w_bits", "a_bits", "calibration", "seed", "weight_method", "bias_correction", "rounding",
       "adaround_iterations", "size_budget_mb", "synth_iterations", "adaround_centered", "adaround_symmetric",
       "adaround_scale_search", "edge_bits", "adaround_relu_aware", "equalize", "adaround_block_iterations",
       "weight_group", "criterion", "depthwise_bits", "edge_parts"]
# what rows written before a column had (flags off, no edge width, no block stage, per-channel scales,
# ConvASR's edges: its first block and decoder)
DEFAULTS = {**dict.fromkeys(("adaround_centered", "adaround_symmetric", "adaround_scale_search",
                             "adaround_relu_aware", "equalize"), False),
            **dict.fromkeys(("edge_bits", "adaround_block_iterations", "weight_group", "depthwise_bits"), 0),
            "criterion": "test", "edge_parts": ""}
#: a phoneme model's rows (metric "per") keep the word columns' names: "wer" holds the PER, "words"
#: the reference phonemes and "word_errors" the phoneme errors ("cer" is empty)


@dataclass
class RecipeRuns:
    """The settings of a run of tools/run_adaround.py (its options, by the same names)."""
    model: str
    data: str
    out: str
    bits: list = field(default_factory=lambda: ["4/8"])   # W/A as "4/8"
    seeds: list = field(default_factory=lambda: [0])
    rounding: str = "adaround"
    iterations: int = 300              # adaround: Adam steps per conv
    bias_correction: bool = False
    raw: bool = False                  # adaround: the raw second-moment objective (not centered)
    symmetric: bool = False            # adaround: learned on the float model's inputs
    scale_search: bool = False
    relu_aware: bool = False
    calibration: str = "synthetic"     # or "real": train-clean-100 audio
    calibration_limit: int = 8
    edge_bits: int = 0
    equalize: bool = False
    block_iterations: int = 0
    weight_group: int = 0
    depthwise_bits: int = 0            # the depthwise convs' width (0: --bits')
    edge_parts: list | None = None     # Conformer: the parts --edge-bits keeps (conformer_weights.EDGE_PARTS)
    size_budget_mb: list = field(default_factory=lambda: [None])
    synth_iterations: int = SYNTH_DEFAULTS["iterations"]
    limit: int | None = None
    eval_batch_size: int = 2
    criterion: str = "test"            # or selection.CRITERION: label-free, on an untranscribed selection set


def settings_of(run: RecipeRuns, name: str, seed: int, w: int, a: int, budget, conformer: bool = False) -> dict:
    """The KEY settings (and observer) of one row, as the CSV records them."""
    adaround = run.rounding == "adaround"
    centered = adaround and not run.raw
    return dict(model=name, w_bits=w, a_bits=a, calibration=run.calibration, seed=seed, observer="minmax",
                weight_method="minmax", bias_correction=bool(run.bias_correction) or centered,
                depthwise_bits=int(run.depthwise_bits or 0), edge_parts=edge_parts_of(run, conformer),
                rounding=run.rounding, adaround_iterations=run.iterations if adaround else 0,
                synth_iterations=run.synth_iterations, size_budget_mb=budget or "", adaround_centered=centered,
                adaround_symmetric=adaround and run.symmetric, adaround_scale_search=adaround and run.scale_search,
                edge_bits=run.edge_bits, adaround_relu_aware=adaround and run.relu_aware,
                equalize=bool(run.equalize), adaround_block_iterations=run.block_iterations if adaround else 0,
                weight_group=run.weight_group, criterion=run.criterion)


def edge_parts_of(run: RecipeRuns, conformer: bool) -> str:
    """The row's edge_parts: '' for ConvASR (its edges are its first block and decoder) and rows
    without an edge width; for a Conformer the parts kept at edge_bits, '+'-joined."""
    if run.edge_parts and not conformer:
        raise ValueError("--edge-parts: the Conformer's parts; a ConvASR's edges are its first block and decoder")
    if not run.edge_bits or not conformer:
        return ""
    from .conformer_weights import DEFAULT_EDGE_PARTS

    return "+".join(run.edge_parts or DEFAULT_EDGE_PARTS)


def recipe_of_run(run: RecipeRuns, key: dict) -> Recipe:
    """What one row of `run` (its KEY settings, ``settings_of``) quantizes with, named by those settings
    (``recipe_of``). bias_correction is the run's flag as given: the row's column also says True for the
    centered AdaRound objective, whose closed-form bias shift is part of AdaRound itself."""
    return Recipe.custom(recipe_of(key), rounding=run.rounding, bias_correction=run.bias_correction,
                         adaround={"iterations": run.iterations, "centered": key["adaround_centered"],
                                   "asymmetric": not run.symmetric, "scale_search": run.scale_search,
                                   "relu_aware": run.relu_aware, "block_iterations": run.block_iterations,
                                   "cache_dir": str(paths.build_dir() / "adaround_cache")},
                         edge_bits=run.edge_bits, equalize=run.equalize, weight_group=run.weight_group)


def measure(run: RecipeRuns, model, utts, key: dict, references=None) -> tuple[dict, float]:
    """Calibrate, quantize and evaluate one setting: (its tidy row, calibration seconds).
    references: the float model's transcripts of `utts` (the fp32-agreement criterion), else None."""
    w, a, seed, budget = key["w_bits"], key["a_bits"], key["seed"], key["size_budget_mb"] or None
    start = time.perf_counter()
    batches = calibration_batches(model, run.calibration, seed=seed, data=paths.librispeech("train-clean-100"),
                                  limit=run.calibration_limit, synth={"iterations": run.synth_iterations},
                                  model_path=run.model, cache_dir=paths.build_dir() / "synth_cache")
    synth_seconds = time.perf_counter() - start
    recipe = recipe_of_run(run, key)
    parts = key["edge_parts"].split("+") if key["edge_parts"] else None
    qmodel = quantize(model, batches, w, a, size_budget_mb=budget, info={"calibration": run.calibration, "seed": seed},
                      depthwise_bits=key["depthwise_bits"] or None, edge_parts=parts, **recipe.settings())
    calib_seconds = time.perf_counter() - start
    del batches
    summary = evaluate(qmodel, utts, batch_size=run.eval_batch_size, progress=False, references=references)
    lo, hi = summary["ci95"]
    size = qmodel.info.get("size_mb") or model_size_mb(model, w)
    metric = "per" if "per" in summary else "wer"
    units = "phonemes" if metric == "per" else "words"
    row = {**key, "observer": "minmax", "metric": metric, "wer": summary[metric], "cer": summary.get("cer", ""),
           "words": summary[units], "word_errors": summary[f"{units[:-1]}_errors"], "utterances": summary["utterances"],
           "ci95_lo": lo, "ci95_hi": hi, "size_mb": round(size, 2), "bops_t": round(bops(model, w, a) / 1e12, 3),
           "eval_seconds": summary["seconds"], "calib_seconds": round(calib_seconds, 1),
           "synth_seconds": round(synth_seconds, 1), "recipe": recipe.name}
    row.update({k: v for k, v in provenance(run.model, utts).items() if k not in row})
    return row, calib_seconds


def run_recipes(run: RecipeRuns) -> None:
    """Every (seed, W/A, budget) of `run` not yet in its CSV: measured and appended, one row each."""
    model = load_model(run.model)
    name = Path(run.model).stem
    conformer = is_conformer(model)
    references = None
    if run.criterion == CRITERION:
        utts = selection_set(run.data, size=run.limit or SELECTION_SIZE)  # --limit: a seeded draw of that many
        references = fp32_transcripts(model, run.model, utts, cache_dir=paths.build_dir() / "selection_cache")
    elif run.criterion == "test":
        utts = load_dataset(run.data, limit=run.limit)
    else:
        raise ValueError(f"criterion {run.criterion!r}: 'test' or {CRITERION!r}")
    out = ResultsFile(run.out, COLUMNS)
    df = out.read()
    for seed in run.seeds:
        for wa in run.bits:
            w, a = (int(x) for x in wa.split("/"))
            for budget in run.size_budget_mb:
                key = settings_of(run, name, seed, w, a, budget, conformer)
                if ResultsFile.has_settings(df, {k: key[k] for k in KEY}, DEFAULTS):
                    continue
                row, calib_seconds = measure(run, model, utts, key, references)
                df = out.append(row)   # the file as it is now (another run may have appended) + this row
                print(f"W{w}A{a} seed {seed} {run.rounding} budget {budget}: {row['metric'].upper()} {row['wer']:.2f} "
                      f"({row['word_errors']}/{row['words']}), calibration {calib_seconds:.0f}s", flush=True)
