"""The experiment grid as a graph of tasks, run in this process or on Dask distributed.

Tasks (plain functions of their arguments; the same graph runs in both executors):
  synth-batch-<content>  one synthetic batch, ``synth.generate_cached(indices=[i])``: its name is
                         a hash of model sha256 + synthesis settings + seed + batch index, so every
                         cell calibrating on it shares one computation (Dask runs a key once); the
                         on-disk cache (atomic files) carries it across runs and killed workers.
  real-batches-<content> features of the real calibration audio, shared by the `real` cells.
  quantize-<cell>        calibrate + convert through ``quantize.quantize`` (any `rounding` it knows).
  shard-<cell>-<j>       transcripts of shard j of the evaluation set: whole length-sorted batches,
                         so every utterance is decoded in the same batch as one process would.
  cell-<cell>            merge the shards, score, write ``cells/<cell>.json`` atomically.
The CSV is rebuilt from the cell files of the run (plus the rows it had), so a rerun skips
finished cells, a worker killed mid-cell loses only what it was computing, and no row is written
twice. Executors: serial (``workers=1``, no scheduler: the grid as it always ran, in this
process), a ``LocalCluster`` of N worker processes, or an existing scheduler (``scheduler=ADDRESS``:
``dask scheduler`` + ``dask worker``, dask-jobqueue on SLURM/PBS, Kubernetes). On a cluster the
model, the data and the cache folder must be on a filesystem every worker sees.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

NA = "-"   # a setting that does not apply to a row (e.g. synthesis settings of a random-calibration row)
EVAL_BATCH = 8


# --------------------------------------------------------------------------- task graph

@dataclass(frozen=True)
class Ref:
    """An argument that is the result of another task."""
    key: str


@dataclass
class Graph:
    tasks: dict = field(default_factory=dict)   # key -> (function, args); insertion order is topological

    def add(self, key: str, func, *args) -> Ref:
        if key not in self.tasks:                # the same content key twice is one task
            self.tasks[key] = (func, args)
        return Ref(key)


def run_serial(graph: Graph, targets: list[str], on_done) -> None:
    """Run every task in order in this process; a result is freed once nothing needs it."""
    uses: dict[str, int] = {}
    for _, args in graph.tasks.values():
        for a in args:
            if isinstance(a, Ref):
                uses[a.key] = uses.get(a.key, 0) + 1
    results: dict = {}
    wanted = set(targets)
    for key, (func, args) in graph.tasks.items():
        results[key] = func(*[results[a.key] if isinstance(a, Ref) else a for a in args])
        for a in args:
            if isinstance(a, Ref):
                uses[a.key] -= 1
                if not uses[a.key] and a.key not in wanted:
                    del results[a.key]
        if key in wanted:
            on_done(key, results.pop(key), None)


def run_dask(client, graph: Graph, targets: list[str], on_done) -> None:
    """Submit the graph to a Dask client (keys as named, so shared tasks run once) and report each
    target as it finishes; a failed target is reported with its exception, the others go on."""
    from distributed import as_completed

    futures: dict = {}
    for key, (func, args) in graph.tasks.items():
        resolved = [futures[a.key] if isinstance(a, Ref) else a for a in args]
        futures[key] = client.submit(func, *resolved, key=key, pure=False)
    by_future = {futures[k]: k for k in targets}
    for fut in as_completed(list(by_future)):
        key = by_future[fut]
        try:
            on_done(key, fut.result(), None)
        except Exception as e:   # noqa: BLE001 -- one cell's failure must not stop the others
            on_done(key, None, e)
        fut.release()


def local_threads(workers: int) -> int:
    """Torch threads per task so that workers x threads fits this machine's cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


# --------------------------------------------------------------------------- tasks

@functools.lru_cache(maxsize=2)
def _float_model(path: str, sha256: str):
    """The float model, loaded once per worker process; refuses a file that changed since the
    grid was planned (its rows would carry the wrong model hash)."""
    from .models.checkpoint import load_model
    from .provenance import file_sha256

    actual = file_sha256(path)
    if actual != sha256:
        raise RuntimeError(f"{path}: model file changed since the grid started (sha256 {actual[:12]}..., "
                           f"expected {sha256[:12]}...)")
    return load_model(path)


@functools.lru_cache(maxsize=2)
def _float_decoder(path: str, sha256: str):
    """The float model as the FP32 row decodes with it (``fastconv.inference_copy``)."""
    from .models.fastconv import inference_copy

    return inference_copy(_float_model(path, sha256))


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def synth_batch(model_path: str, model_sha: str, params: dict, index: int, cache_dir: str, threads: int | None):
    """Synthetic batch `index` (from the cache when it is there) -> dict(mel, lengths, losses, seconds)."""
    from .synth import generate_cached

    _threads(threads)
    model = _float_model(model_path, model_sha)
    t0 = time.perf_counter()
    s = generate_cached(model, model_path, params, cache_dir, indices=[index], threads=threads, progress=False)
    return {"mel": s.mels[0], "lengths": s.lengths[0], "final_loss": s.losses[0][-1],
            "seconds": time.perf_counter() - t0, "generated": bool(s.params["generated"])}


def real_batches(model_path: str, model_sha: str, data: str, limit: int | None, threads: int | None):
    from .calibration import real_mels

    _threads(threads)
    return real_mels(_float_model(model_path, model_sha), data, 8, limit)


def quantize_cell(model_path: str, model_sha: str, settings: dict, threads: int | None, *batches):
    """Calibrate and convert one cell: ``quantize.quantize`` (or, for the Conformer's float
    non-linearity ablation, ``SimulatedConformer`` on the same rounding points)."""
    from .calibration import random_mels
    from .quantize import Recipe, quantize

    _threads(threads)
    model = _float_model(model_path, model_sha)
    t0 = time.perf_counter()
    kind = settings["calibration"]
    if kind == "random":
        n_mels = int(getattr(getattr(model, "encoder", None), "feat_in", 64))
        batches = random_mels(settings["calib_batches"], settings["calib_batch_size"], settings["calib_frames"],
                              settings["seed"], n_mels=n_mels)
    elif kind == "synthetic":
        batches = [(b["mel"], b["lengths"]) for b in batches]
    else:
        (batches,) = batches
    w, a = settings["w_bits"], settings["a_bits"]
    if settings["nonlinear"] == "float":
        from .convert_conformer import calibrate_conformer
        from .simulate import SimulatedConformer

        qmodel = SimulatedConformer(model, calibrate_conformer(model, batches, settings["observer"]), w, a)
    else:
        if settings.get("recipe"):   # a named recipe (tables.recipe_settings): resolved again here
            from . import paths
            from .quantize import is_conformer

            recipe = Recipe.resolve(settings["recipe"], w, conformer=is_conformer(model),
                                    adaround_cache=paths.build_dir() / "adaround_cache")
            if settings.get("edge_parts") and "+".join(recipe.edge_parts or ()) != settings["edge_parts"]:
                raise ValueError(f"grid cell {settings['recipe']}: edge parts {settings['edge_parts']} are not the "
                                 f"recipe's {recipe.edge_parts} (the recipe changed since the cell was planned)")
        else:
            recipe = Recipe.custom(rounding=settings["rounding"], bias_correction=bool(settings["bias_correction"]))
        qmodel = quantize(model, batches, w, a, observer=settings["observer"], weight_method=settings["weight_method"],
                          depthwise_bits=settings["depthwise_bits"] or None,
                          info={"calibration": kind, "seed": settings["seed"]}, **recipe.settings())
    return {"model": qmodel, "seconds": time.perf_counter() - t0, "size_mb": getattr(qmodel, "info", {}).get("size_mb")}


def transcribe_shard(model_path: str, model_sha: str, quantized, utts: list, batch_size: int, threads: int | None):
    """Transcripts of `utts` (whole batches of the full set's length-sorted order) by the quantized
    model, or by the float model when `quantized` is None."""
    from .evaluate import transcribe

    _threads(threads)
    model = quantized["model"] if quantized is not None else _float_decoder(model_path, model_sha)
    t0 = time.perf_counter()
    hyps = transcribe(model, utts, batch_size=batch_size, progress=False)
    engine = ("torch-fp32" if quantized is None else
              model.engine_name() if hasattr(model, "engine_name") else f"torch ({type(model).__name__})")
    return {"hyps": hyps, "seconds": time.perf_counter() - t0, "engine": engine}


def finish_cell(model_path: str, model_sha: str, base: dict, utts: list, shards: list, cell_file: str,
                threads: int | None, quantized, n_synth: int, *results) -> dict:
    """Merge the shards' transcripts (back in the set's order), score, and write the cell file
    (row + transcripts) atomically. `results`: the cell's synthetic batches, then its shards.
    Returns the row."""
    synth, shard_results = results[:n_synth], results[n_synth:]
    from .evaluate import score
    from .models.checkpoint import atomic_write_bytes
    from .provenance import code_version, machine

    model = _float_model(model_path, model_sha)
    hyps: list = [None] * len(utts)
    for idx, res in zip(shards, shard_results):
        for i, h in zip(idx, res["hyps"]):
            hyps[i] = h
    summary = score(model, utts, hyps)   # what `evaluate` reports, from the shards' transcripts
    summary["seconds"] = round(sum(r["seconds"] for r in shard_results), 3)
    quantize_s = quantized["seconds"] if quantized is not None else 0.0
    synth_s = sum(b["seconds"] for b in synth if b["generated"])
    timing = {"quantize_seconds": round(quantize_s, 2), "synth_seconds": round(synth_s, 2),
              "calib_seconds": round(quantize_s + synth_s, 1), "eval_shards": len(shards),
              "engine": ", ".join(sorted({r.get("engine", "?") for r in shard_results}))}
    if synth:
        timing["synth_final_loss"] = float(sum(b["final_loss"] for b in synth) / len(synth))
    code = code_version()
    where = {"code_version": code["version"], "code_commit": code["commit"], "code_dirty": code["dirty"],
             **machine(), "torch_threads": threads or "default", "host": os.uname().nodename, "worker": _worker_name()}
    row = tidy_row(base, summary, model, {**timing, **where})
    if base.get("recipe") and quantized is not None and quantized.get("size_mb") is not None:
        row["size_mb"] = round(quantized["size_mb"], 2)   # edges and multipliers: the recipe's own size
    blob = {"row": row, "transcripts": summary["transcripts"]}
    atomic_write_bytes(cell_file, lambda f: f.write(json.dumps(blob, indent=1, default=str).encode()))
    return row


def _worker_name() -> str:
    """The Dask worker that finished the cell ("local": the serial executor)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def tidy_row(settings: dict, summary: dict, model, extra: dict) -> dict:
    """One tidy row. Word models carry WER/CER over words; phoneme models (hama) carry PER over
    phonemes in the same columns' places: `metric` says which (wer or per), `error_rate` the value."""
    from .experiments import bops, model_size_mb

    lo, hi = summary["ci95"]
    if "per" in summary:
        metric = {"metric": "per", "error_rate": summary["per"], "per": summary["per"], "units": summary["phonemes"],
                  "unit_errors": summary["phoneme_errors"]}
    else:
        metric = {"metric": "wer", "error_rate": summary["wer"], "wer": summary["wer"], "cer": summary["cer"],
                  "words": summary["words"], "word_errors": summary["word_errors"], "units": summary["words"],
                  "unit_errors": summary["word_errors"]}
    w, a = settings["w_bits"], settings["a_bits"]
    return {**settings, **metric, "utterances": summary["utterances"], "ci95_lo": lo, "ci95_hi": hi,
            "size_mb": round(model_size_mb(model, w, depthwise_bits=settings["depthwise_bits"] or None), 2),
            "bops_t": round(bops(model, w, a) / 1e12, 3), "eval_seconds": summary["seconds"], **extra}


# --------------------------------------------------------------------------- planning

def content_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def shards_of(utts: list, batch_size: int, shard_utterances: int | None) -> list[list[int]]:
    """Utterance indices per shard: consecutive whole batches of the length-sorted order (what
    ``evaluate.transcribe`` decodes together), about `shard_utterances` each (None: one shard)."""
    from .data import length_sorted_batches

    batches = length_sorted_batches(utts, batch_size)
    per = max(1, (shard_utterances or len(utts)) // batch_size)
    return [sum(batches[i:i + per], []) for i in range(0, len(batches), per)]


@dataclass
class Cell:
    settings: dict       # the grid settings of the row (tables.KEY)
    key: str             # hash of settings + model sha256 + evaluation-set fingerprint: the resume key
    label: str


def add_cell(graph: Graph, cell: Cell, *, model_path: str, model_sha: str, base: dict, utts: list,
             shards: list, cell_file: Path, cache_dir: str, threads: int | None, synth_params: dict | None,
             real: Ref | None, batch_size: int) -> str:
    """The tasks of one cell; returns the key of its final task."""
    s = cell.settings
    synth: list = []
    quantized = None
    if s["calibration"] != "none":
        if s["calibration"] == "synthetic":
            for i in range(s["calib_batches"]):
                name = f"synth-batch-{content_key(model_sha, synth_params, i)}"
                synth.append(graph.add(name, synth_batch, model_path, model_sha, synth_params, i, cache_dir, threads))
        deps = synth if s["calibration"] == "synthetic" else ([real] if s["calibration"] == "real" else [])
        quantized = graph.add(f"quantize-{cell.key}", quantize_cell, model_path, model_sha, s, threads, *deps)
    shard_refs = [graph.add(f"shard-{cell.key}-{j}", transcribe_shard, model_path, model_sha, quantized,
                            [utts[i] for i in idx], batch_size, threads)
                  for j, idx in enumerate(shards)]
    done = f"cell-{cell.key}"
    graph.add(done, finish_cell, model_path, model_sha, base, utts, shards, str(cell_file), threads, quantized,
              len(synth), *synth, *shard_refs)
    return done


def start_client(workers: int, scheduler: str | None, progress: bool = True):
    """(client, cluster or None). A LocalCluster of `workers` single-task processes, or a client of
    an existing scheduler. Prints the dashboard address."""
    from distributed import Client, LocalCluster

    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        import dask

        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers; setting it at all turns off
        # glibc's adaptive mmap threshold, so every large tensor is a fresh mmap + page faults: the
        # grid's tasks (int64 reference kernels) ran ~5x slower in workers than in one process
        # (results/README.md). Large thresholds keep freed memory for reuse, as one process does.
        env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}),
               "MALLOC_TRIM_THRESHOLD_": 1 << 30, "MALLOC_MMAP_THRESHOLD_": 1 << 30}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
    if progress:
        n = len(client.scheduler_info().get("workers", {}))
        print(f"dask: {client.scheduler.address}, {n} worker(s); dashboard: {client.dashboard_link}", flush=True)
    return client, cluster
