"""WER against model size (tools/run_size_sweep.py): mixed-precision weights under size budgets
(``quantize(..., size_budget_mb=B)``, bias correction on) and uniform widths, zero-shot on the
grid's default synthetic batch of each seed (read from the shared cache, never generated unless
asked), evaluated; one tidy row per (budget or width, seed), with provenance and its ``cell_key``
(settings + model sha256 + evaluation-set fingerprint), appended through ``ResultsFile``: a rerun
skips the cells already in the CSV.

The sensitivity pass (``quant.mixed_precision``) runs once per seed: it is cached on disk and in
the process, and every budget of the seed allocates from it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .calibration import calibration_batches
from .data import load_dataset
from .evaluate import evaluate
from .gridrun import content_key
from .models.checkpoint import load_model
from .options import SYNTH_DEFAULTS
from .provenance import eval_set_fingerprint, file_sha256, provenance
from .quant import mixed_precision as mp
from .quantize import Recipe, quantize
from .results_file import ResultsFile
from .synth import cache_key, model_hash
from .tables import GridSpec, calibration_settings, synth_params

SENSITIVITY = {True: "logit_error_bias_corrected", False: "logit_error"}   # the row's `sensitivity`


@dataclass
class SizeSweepRuns:
    """The settings of a run of tools/run_size_sweep.py (its options, by the same names)."""
    model: str
    data: str
    out: str
    cache_dir: str
    sensitivity_cache: str
    budgets: list = field(default_factory=lambda: [9.5, 10.0, 10.5, 11.5, 13.5])   # MiB
    uniform_bits: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    weight_bits: int = 4
    act_bits: int = 8
    no_bias_correction: bool = False
    sensitivity_without_bias_correction: bool = False
    synth_iterations: int = SYNTH_DEFAULTS["iterations"]
    generate: bool = False
    limit: int | None = None
    eval_backend: str = "fast"   # or "reference": the torch int64 engine


def synth_ready(model, digest: str, spec: GridSpec, seed: int, cache_dir: Path) -> bool:
    """Is the synthetic batch of this seed already in the cache (never generate it here: the grid
    generates the default batches, and two processes must not race for them)?"""
    p = synth_params(spec, model, seed)
    folder = cache_dir / cache_key(digest, p)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return all(str(i) in manifest.get("batches", {}) and (folder / f"batch_{i:05d}.pt").is_file()
               for i in range(p["n_batches"]))


def widths_of(model, bits: dict | None, weight_bits: int) -> dict:
    """bits_W (how many convs) and params_W (how many stored parameters) at each width."""
    out = {f"{k}_{w}": 0 for k in ("bits", "params") for w in mp.WIDTHS}
    for conv, bn in mp.weight_convs(model):
        w = int(bits[conv]) if bits else weight_bits
        out[f"bits_{w}"] += 1
        out[f"params_{w}"] += mp.stored_params(conv, bn)
    return out


def with_backend(qmodel, backend: str):
    """The integer model evaluated by `backend`: its own reference engine, or the fast runner
    (torch._int_mm + the native C kernels) in its place; the logits are the same integers."""
    if backend == "fast":
        from .program.fast import TorchIntegerRunner

        qmodel.forward_int = TorchIntegerRunner(qmodel.program, threads=1).run_with_lengths
    return qmodel


def cell_settings(run: SizeSweepRuns, name: str, seed: int, budget, uniform, calib: dict) -> dict:
    """One cell's settings, as the CSV records them ('-' where a mixed-precision setting does not apply)."""
    bc = not run.no_bias_correction
    mixed = budget is not None
    return dict(model=name, w_bits=uniform or run.weight_bits, a_bits=run.act_bits, calibration="synthetic",
                seed=seed, observer="minmax", weight_method="minmax", bias_correction=bc, depthwise_bits=0,
                rounding="nearest", size_budget_mb=budget if mixed else "-",
                sensitivity=SENSITIVITY[bc and not run.sensitivity_without_bias_correction] if mixed else "-",
                sensitivity_frames=200 if mixed else "-", sensitivity_items=2 if mixed else "-", **calib)


class _Seed:
    """One seed's synthetic batch and sensitivity time, made when its first missing cell needs them."""

    def __init__(self, run: SizeSweepRuns, model, seed: int):
        self.run, self.model, self.seed = run, model, seed
        self.batches, self.sens_seconds = None, None

    def get_batches(self):
        if self.batches is None:
            self.batches = calibration_batches(
                self.model, "synthetic", seed=self.seed, synth={"iterations": self.run.synth_iterations},
                model_path=self.run.model, cache_dir=self.run.cache_dir, progress=False)
        return self.batches

    def sensitivity_seconds(self, bc_sens: bool) -> float:
        if self.sens_seconds is None:   # once per seed (disk cache: measured by an earlier run)
            t0 = time.perf_counter()
            mel, lens = mp.sensitivity_crop(self.batches)
            mp.cached_sensitivities(self.model, mel, lens, bias_correction=bc_sens,
                                    cache_dir=self.run.sensitivity_cache, progress=False)
            self.sens_seconds = mp.sensitivity_seconds(self.model, mel, lens, bias_correction=bc_sens)
            print(f"seed {self.seed}: sensitivities in {self.sens_seconds:.0f} s "
                  f"(this run: {time.perf_counter() - t0:.0f} s)", flush=True)
        return self.sens_seconds


def measure_cell(run: SizeSweepRuns, model, utts, state: _Seed, settings: dict) -> tuple[dict, float]:
    """Allocate (under a budget), quantize and evaluate one cell: (its tidy row without cell_key,
    the stored size in MiB before rounding)."""
    bc = settings["bias_correction"]
    bc_sens = bc and not run.sensitivity_without_bias_correction
    budget = settings["size_budget_mb"] if settings["size_budget_mb"] != "-" else None
    w = settings["w_bits"]
    batches = state.get_batches()
    bits, sens_s = None, 0.0
    if budget is not None:
        sens_s = state.sensitivity_seconds(bc_sens)
        bits = mp.allocate_bits(model, batches, budget, bias_correction=bc_sens, cache_dir=run.sensitivity_cache,
                                progress=False)
    t0 = time.perf_counter()
    recipe = Recipe.custom(rounding=settings["rounding"], bias_correction=bc)
    qmodel = quantize(model, batches, w, run.act_bits, size_budget_mb=budget,
                      mixed_precision={"bias_correction": bc_sens, "cache_dir": run.sensitivity_cache},
                      info={"calibration": "synthetic", "seed": state.seed}, progress=False, **recipe.settings())
    quant_s = time.perf_counter() - t0   # sensitivities came from the cache: allocation + conversion
    summary = evaluate(with_backend(qmodel, run.eval_backend), utts, progress=False)
    lo, hi = summary["ci95"]
    size = qmodel.info.get("size_mb") or mp.size_mb(model, lambda c, w=w: w)
    row = {**settings, "wer": summary["wer"], "cer": summary["cer"], "words": summary["words"],
           "word_errors": summary["word_errors"], "utterances": summary["utterances"],
           "ci95_lo": lo, "ci95_hi": hi, "size_mb": round(size, 3), **widths_of(model, bits, w),
           "eval_seconds": summary["seconds"], "sensitivity_seconds": round(sens_s, 1),
           "calib_seconds": round(quant_s + sens_s, 1), "eval_backend": run.eval_backend}
    row.update({k: v for k, v in provenance(run.model, utts).items() if k not in row})
    return row, size


def run_size_sweep(run: SizeSweepRuns) -> int:
    """Every (seed, budget or uniform width) of `run` not yet in its CSV: measured and appended.
    A seed whose synthetic batch is not cached is skipped (unless `generate`). Returns 0, or 3
    when some seed was skipped."""
    model = load_model(run.model)
    name = Path(run.model).stem
    utts = load_dataset(run.data, limit=run.limit)
    model_sha, eval_sha = file_sha256(run.model), eval_set_fingerprint(utts)["sha256"]
    digest = model_hash(model)
    out = ResultsFile(run.out)
    done = out.keys()
    spec = GridSpec(synth={**SYNTH_DEFAULTS, "iterations": run.synth_iterations})
    calib = calibration_settings(spec, "synthetic", model)
    cells = [(b, None) for b in run.budgets] + [(None, w) for w in run.uniform_bits]
    missing_seeds = []
    for seed in run.seeds:
        if not run.generate and not synth_ready(model, digest, spec, seed, Path(run.cache_dir)):
            print(f"seed {seed}: its synthetic batch is not in {run.cache_dir} yet; skipped (rerun later)", flush=True)
            missing_seeds.append(seed)
            continue
        state = _Seed(run, model, seed)
        for budget, uniform in cells:
            settings = cell_settings(run, name, seed, budget, uniform, calib)
            key = content_key(settings, model_sha, eval_sha)
            if key in done or key in out.keys():   # (a concurrent sweep may have made it)
                continue
            row, size = measure_cell(run, model, utts, state, settings)
            row["cell_key"] = key
            out.append(row)   # not added when a concurrent sweep wrote this cell first
            done.add(key)
            what = f"budget {budget} MiB" if budget is not None else f"uniform W{settings['w_bits']}"
            print(f"seed {seed} {what}: {size:.2f} MiB, bits 4/6/8 = {row['bits_4']}/{row['bits_6']}/"
                  f"{row['bits_8']}, WER {row['wer']:.2f} ({row['word_errors']}/{row['words']}), "
                  f"calibration {row['calib_seconds']:.0f} s, evaluation {row['eval_seconds']:.0f} s", flush=True)
    if missing_seeds:
        print(f"seeds without a cached batch: {missing_seeds}", file=sys.stderr)
        return 3
    return 0
