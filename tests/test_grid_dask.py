"""The grid on Dask distributed (issue 15): a scheduler and workers started by hand give the rows
one process gives; a worker killed mid-run loses only its cell, and a rerun completes the grid
with no duplicate or missing row. Tiny random-weight ConvASR, 4 synthetic utterances."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("distributed")

from grid_fixtures import tiny_model_and_data  # noqa: E402

from intasr.tables import GridSpec, run_grid  # noqa: E402

SPEC = GridSpec(bits=((8, 8), (6, 8)), calibrations=("synthetic", "random"), seeds=(0, 1),
                synth={"n_batches": 2, "batch_size": 2, "frames": 40, "iterations": 3}, random_frames=40)
RESULTS = ["cell_key", "model_sha256", "eval_sha256", "wer", "cer", "word_errors", "ci95_lo", "ci95_hi", "size_mb"]
RUN = dict(threads=1, shard_utterances=2, batch_size=2, progress=False)   # 2 shards of one batch of 2


def _dask(*args) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "dask"
    return subprocess.Popen([str(exe), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _worker(scheduler_file: Path) -> subprocess.Popen:
    # no nanny: killing the process removes the worker (a nanny would restart it)
    return _dask("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-nanny",
                 "--no-dashboard")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_dask")
    model, data = tiny_model_and_data(root)
    serial = run_grid(model, data, root / "serial" / "grid.csv", SPEC, cache_dir=root / "serial" / "cache", **RUN)
    return root, model, data, serial


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """`dask scheduler` + two `dask worker` processes, started by hand: (address, scheduler file)."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("scheduler")
    sfile = folder / "scheduler.json"
    procs = [_dask("scheduler", "--scheduler-file", str(sfile), "--port", "0", "--no-dashboard")]
    try:
        deadline = time.time() + 60
        while not sfile.is_file() and time.time() < deadline:
            time.sleep(0.2)
        procs += [_worker(sfile), _worker(sfile)]
        address = json.loads(sfile.read_text())["address"]
        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
        yield address, sfile
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("cell_key").reset_index(drop=True)[RESULTS]


def _transcripts(csv: Path) -> dict:
    return {p.stem: json.loads(p.read_text())["transcripts"] for p in (csv.parent / "cells").glob("*.json")}


def test_grid_on_a_scheduler_started_by_hand_gives_the_serial_rows(assets, scheduler):
    from distributed import Client, get_task_stream

    root, model, data, serial = assets
    csv = root / "dask" / "grid.csv"
    with Client(scheduler[0], timeout=60) as client, get_task_stream(client=client) as stream:
        df = run_grid(model, data, csv, SPEC, cache_dir=root / "dask" / "cache", client=client, **RUN)
    assert len(df) == 9 and df.cell_key.is_unique and (df.eval_shards == 2).all()
    pd.testing.assert_frame_equal(_rows(df), _rows(serial))
    assert _transcripts(csv) == _transcripts(root / "serial" / "grid.csv")   # shards merged in the set's order
    # each synthetic batch (2 seeds x 2 batches) is one task, shared by the W8A8 and W6A8 cells
    keys = [t["key"] for t in stream.data]
    assert sum(str(k).startswith("synth-batch-") for k in keys) == 4
    assert sum(str(k).startswith("quantize-") for k in keys) == 8 and len({t["worker"] for t in stream.data}) == 2


def test_killed_worker_loses_only_its_cell_and_a_rerun_completes(assets, scheduler):
    from distributed import Client

    root, model, data, serial = assets
    address, sfile = scheduler
    csv = root / "killed" / "grid.csv"
    cells = csv.parent / "cells"
    with Client(address, timeout=60) as c:
        ours = set(c.scheduler_info()["workers"])
    victim = _worker(sfile)
    try:
        with Client(address, timeout=60) as c:
            c.wait_for_workers(3, timeout=60)
            extra = set(c.scheduler_info()["workers"]) - ours
        outcome = {}

        def grid():
            try:
                outcome["df"] = run_grid(model, data, csv, SPEC, cache_dir=root / "killed" / "cache", scheduler=address,
                                         **RUN)
            except Exception as e:   # noqa: BLE001 -- a failed run is allowed; the rerun must complete it
                outcome["error"] = e

        run = threading.Thread(target=grid)
        run.start()
        # kill the third worker while it computes something, once at least one cell is finished
        with Client(address, timeout=60) as c:
            deadline = time.time() + 60
            while time.time() < deadline and run.is_alive():
                busy = {w for w, keys in c.processing().items() if keys}
                if any(cells.glob("*.json")) and busy & extra:
                    break
                time.sleep(0.05)
            before = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        run.join(timeout=120)
        assert not run.is_alive()
    finally:
        victim.kill()
    assert before and len(before) < 9, "the worker was not killed mid-run"
    # the cells finished before the kill are kept as they were
    assert {p: cells.joinpath(p).stat().st_mtime_ns for p in before} == before
    df = run_grid(model, data, csv, SPEC, cache_dir=root / "killed" / "cache", scheduler=address, **RUN)
    on_disk = pd.read_csv(csv)
    assert len(on_disk) == 9 and on_disk.cell_key.is_unique and len(list(cells.glob("*.json"))) == 9
    pd.testing.assert_frame_equal(_rows(df), _rows(serial))


def test_paper_profile_is_the_papers_protocol_and_its_cost_adds_up():
    from intasr.tables import PAPER_PROFILE, SPLIT_UTTERANCES, paper_cost, paper_specs

    specs = paper_specs()
    synth = {(s.synth["lr"], s.synth["iterations"]) for s in specs}
    assert synth == {(lr, it) for lr in (0.03, 0.04, 0.05, 0.06) for it in (200, 250)}
    assert all(s.synth["n_batches"] == 20 and s.synth["batch_size"] == 8 and s.seeds == (0, 1, 2, 3)
               and s.bits == ((8, 8), (6, 8)) for s in specs)
    assert sum("random" in s.calibrations for s in specs) == 1   # the ablation once, not per synthesis setting
    cost = paper_cost(1.0, 0.0)
    assert cost["adam_iterations"] == 20 * 4 * 4 * (200 + 250) and cost["evaluation_hours"] == 0
    assert cost["synthesis_hours"] == cost["adam_iterations"] / 3600
    utts = sum(SPLIT_UTTERANCES[s] for s in PAPER_PROFILE["splits"])
    assert paper_cost(0.0, 1.0)["evaluated_utterances"] == (8 * 4 * 2 + 4 * 2 + 1) * utts
