"""Latency results read back (deploy/latency.py), the sub-block timer (deploy/subblock.py) and the
Fig. 2 caption (deploy/fig2.py): small hand-made CSV and JSON files, hand-checkable ratios."""

import itertools
import json

import pandas as pd
import pytest

from intasr.deploy import latency, subblock


def _fig2_rows(model, fp32_ms, c_ms, peer_ms, threads=1, load=1.5, kernels="avx2"):
    base = {"model": model, "threads": threads, "loadavg_before": load, "cpu": "Test CPU", "repeats": 3,
            "kernels": kernels, "size_mb": 1.0}
    rows = [
        ("torch-fp32", "FP32", False, fp32_ms * 2, False, False),
        ("onnxruntime-fp32", "FP32", False, fp32_ms, True, True),
        ("c-int8", "INT8", True, c_ms, True, True),
        ("torch-int8+fp32exact-dw", "INT8", False, c_ms / 2, True, False),
        ("onnxruntime-static-int8", "INT8-PEER", False, peer_ms, True, False),
    ]
    return [{**base, "runtime": rt, "precision": p, "integer_only": io, "latency_ms": ms, "best": best,
             "headline": head} for rt, p, io, ms, best, head in rows]


@pytest.fixture
def fig2_frame():
    return pd.DataFrame(_fig2_rows("QuartzNet-5x5", 300.0, 100.0, 120.0) + _fig2_rows("QuartzNet-15x5", 900.0, 300.0, 270.0))


def test_fig2_summary_takes_the_best_of_each_precision(fig2_frame):
    s = latency.fig2_summary(fig2_frame)
    assert list(s.model) == ["QuartzNet-5x5", "QuartzNet-15x5"]       # the frame's order
    r = s.set_index("model").loc["QuartzNet-5x5"]
    assert r["FP32 runtime"] == "onnxruntime-fp32" and r["FP32 ms"] == 300.0
    assert r["INT8 runtime"] == "c-int8" and r["speedup"] == 3.0
    # the fastest integer-only INT8 is the C runtime, not the faster float-exact runner
    assert r["integer-only INT8 ms"] == 100.0 and r["integer-only speedup"] == 3.0
    assert r["C vs FP32"] == 3.0 and r["C vs onnxruntime int8"] == 1.2
    assert s.set_index("model").loc["QuartzNet-15x5", "C vs onnxruntime int8"] == 0.9


def test_fig2_runs_reads_every_csv_with_its_kernels(tmp_path, fig2_frame):
    fig2_frame.to_csv(tmp_path / "fig2_latency_avx2.csv", index=False)
    fig2_frame.drop(columns="kernels").to_csv(tmp_path / "fig2_latency.csv", index=False)
    runs = latency.fig2_runs(tmp_path)
    assert set(runs) == {"avx2", latency.EARLIER_KERNELS}
    assert (runs[latency.EARLIER_KERNELS].file == "fig2_latency.csv").all()
    tables = latency.fig2_committed_tables(runs)
    assert len(tables) == 2 and all(len(t) == 2 for _, t in tables)
    caption = dict((t[0].split("**")[1], t[0]) for t in tables)["Committed run, avx2 kernels, 1 thread(s)"]
    assert "`benchmarks/fig2_latency_avx2.csv`" in caption and "load 1.5-1.5" in caption and "3 interleaved" in caption


def _bench_json(path, threads, fp32_ms, c_ms, peer_ms, kernels=None):
    c = {"precision": "int8", "integer_only": True, "median_ms": c_ms, "iqr_ms": 1.0, "bit_exact": True}
    if kernels:
        c["kernels"] = kernels
    res = {"threads": threads, "loadavg_before": [2.0, 1.0, 1.0], "fp32_ms": fp32_ms, "fp32_runtime": "torch-fp32",
           "peer_ms": peer_ms, "c_int8_ms": c_ms, "c_vs_fp32": fp32_ms / c_ms, "c_vs_peer": peer_ms / c_ms,
           "int8_integer_only_ms": c_ms, "int8_integer_only_runtime": "c-int8", "speedup_integer_only": fp32_ms / c_ms,
           "runtimes": {"torch-fp32": {"precision": "fp32", "integer_only": False, "median_ms": fp32_ms, "iqr_ms": 2.0},
                        "c-int8": c}}
    path.write_text(json.dumps(res))


def test_bench_tables_from_json(tmp_path):
    _bench_json(tmp_path / "bench_c_qn_avx2_t1.json", 1, 400.0, 100.0, 110.0, kernels="avx2")
    _bench_json(tmp_path / "bench_c_qn_t2.json", 2, 300.0, 150.0, 200.0)
    c = latency.c_bench_table(tmp_path, "bench_c_qn*_t*.json", vs_fp32_target=3.0, vs_peer_target=1.15)
    assert list(c.kernels) == ["avx2", latency.EARLIER_KERNELS]
    assert list(c["C vs FP32"]) == [4.0, 2.0] and list(c["target 3.0x met"]) == [True, False]
    assert list(c["C vs onnxruntime int8"]) == [1.1, 1.33] and list(c["target 1.15x met"]) == [False, True]
    assert c["torch+native-int8 ms"].isna().all()
    lines, rows = latency.bench_json_table(tmp_path, "bench_c_qn*_t*.json")
    assert len(lines) == 2 and lines[0].endswith("4.00x")
    assert len(rows) == 4 and list(rows.speedup_vs_best_fp32) == [1.0, 4.0, 1.0, 2.0]
    assert len(latency.c_bench_table(tmp_path, "none_*.json")) == 0


def test_exactness_and_c_runtime_readers(tmp_path):
    assert latency.exactness_report(tmp_path / "missing.json") is None
    assert latency.c_runtime_sentence(tmp_path / "missing.json") is None
    text, values = latency.conformer_c_runtime(tmp_path / "missing.json")
    assert text is None and set(values.values()) == {"(not measured)"}
    (tmp_path / "ex.json").write_text(json.dumps({"utterances": 3, "runtimes": {"a": {"x": 1}, "b": {"x": 0}}}))
    caption, table = latency.exactness_report(tmp_path / "ex.json")
    assert "3 test-other utterances" in caption and list(table.index) == ["a", "b"]
    run = {"quantized": "q.aqz", "utterances": 4, "kernels": "avx2", "tokens_equal": 4, "logits_differ": 0,
           "logits": 12345, "wer_c_runtime": {"wer": 10.0, "per": 9.5, "phoneme_errors": 19, "phonemes": 200},
           "wer_forward_int": {"wer": 10.0, "per": 9.5}}
    (tmp_path / "c.json").write_text(json.dumps(run))
    assert "**4/4**" in latency.c_runtime_sentence(tmp_path / "c.json")
    text, values = latency.conformer_c_runtime(tmp_path / "c.json")
    assert values == {"conf_c_utts": "4/4", "conf_c_logits": "12,345", "conf_c_differ": "0"}
    assert "PER 9.50 % (19/200 phonemes)" in text


def _conformer_rows():
    rows = []
    for model, th, (rt, ms) in itertools.product(("hama", "nemo-small"), (1, 2),
                                                 [("torch-fp32", 40.0), ("onnxruntime-dynamic-int8", 20.0),
                                                  ("c-int8", 10.0)]):
        rows.append({"kernel_family": "avx2", "cpu": "Test CPU", "model": model, "threads": th, "runtime": rt,
                     "latency_ms": ms / th, "speedup_vs_fastest_fp32": 40.0 / ms,
                     "speedup_vs_dynamic_int8": 20.0 / ms if rt == "c-int8" else float("nan"),
                     "added_rss_mib": 5.0, "bit_exact": rt == "c-int8", "loadavg_before": 1.0,
                     "fastest_fp32": "torch-fp32"})
    return pd.DataFrame(rows)


def test_conformer_latency_tables_and_values(tmp_path):
    _conformer_rows().to_csv(tmp_path / "conformer_latency_avx2.csv", index=False)
    lat = latency.read_csvs(tmp_path, "conformer_latency_*.csv")
    assert len(lat) == 12 and (lat.file == "conformer_latency_avx2.csv").all()
    pivot, c_rows = latency.conformer_latency_tables(lat)
    assert pivot.shape == (4, 3) and pivot.loc[("avx2", "hama", 2), "c-int8"] == "5.0 ms"
    assert len(c_rows) == 4 and set(c_rows.vs_fp32) == {"4.00x"} and set(c_rows.vs_dyn8) == {"2.00x"}
    values = latency.conformer_latency_values(lat)
    assert values["lat_cpu"] == "Test CPU (avx2 kernels, back-to-back turns)"
    assert values["hama_c_ms"] == "10.0" and values["small_vs_dyn8"] == "2.00" and values["hama_fp32_rt"] == "torch-fp32"
    assert values["lat_other_cpus"] == "No other kind of CPU was measured."
    empty = latency.conformer_latency_values(latency.read_csvs(tmp_path, "nothing_*.csv"))
    assert set(empty) == set(values) and set(empty.values()) == {"(not measured)"}


def test_a_second_kind_of_cpu_gets_its_own_sentence_and_panels(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    _conformer_rows().to_csv(tmp_path / "conformer_latency_avx2.csv", index=False)
    vnni = _conformer_rows().assign(kernel_family="avx512-vnni", cpu="Other CPU")
    vnni.loc[vnni.runtime == "c-int8", "latency_ms"] /= 2
    vnni.to_csv(tmp_path / "conformer_latency_avx512-vnni.csv", index=False)
    lat = latency.read_csvs(tmp_path, "conformer_latency_*.csv")
    values = latency.conformer_latency_values(lat)
    assert values["lat_cpu"] == "Test CPU (avx2 kernels, back-to-back turns)" and values["hama_c_ms"] == "10.0"
    other = values["lat_other_cpus"]
    assert other.startswith("On Other CPU (avx512-vnni kernels, back-to-back turns): hama, 1 thread: 5.0 ms")
    assert "nemo-small, 2 threads: 2.5 ms" in other and "Test CPU" not in other
    settled = latency.read_csvs(tmp_path, "conformer_latency_*.csv")   # the second CPU's run in settled turns
    settled.loc[settled.kernel_family == "avx512-vnni", "turns"] = "settled"
    assert latency.conformer_latency_values(settled)["lat_other_cpus"].startswith(
        "On Other CPU (avx512-vnni kernels, settled turns): ")
    fig = latency.plot_conformer_latency(lat)
    assert [ax.get_title() for ax in fig.axes] == ["hama (avx2 kernels)", "nemo-small (avx2 kernels)",
                                                   "hama (avx512-vnni kernels)", "nemo-small (avx512-vnni kernels)"]


def test_time_interleaved_medians_and_order():
    calls = []
    ticks = iter(range(1000))

    def clock():                       # each reading one tick (1 ms) after the last
        return next(ticks) * 1e-3

    fns = {("p", "a"): lambda: calls.append("a"), ("p", "b"): lambda: calls.append("b")}
    parts = subblock.time_interleaved(fns, rounds=4, clock=clock)
    assert calls == ["a", "b"] + ["a", "b"] * 4    # one warm-up, then interleaved rounds
    assert list(parts.implementation) == ["a", "b"]
    assert (parts.median_ms == 1.0).all() and (parts.iqr_ms == 0.0).all()


def test_pointwise_summary_uses_the_faster_float_conv():
    parts = pd.DataFrame({"piece": ["pointwise 8x8"] * 3 + ["depthwise k3"],
                          "implementation": ["FP32 torch conv1d", "FP32 onnxruntime", "INT8 torch._int_mm", "x"],
                          "median_ms": [4.0, 3.0, 1.5, 99.0]})
    assert subblock.pointwise_summary(parts, C=8) == {"pw_intmm_ms": "1.50", "pw_fp32_ms": "3.00",
                                                      "pw_intmm_ratio": "2.00"}


def test_fig2_paper_statement_reads_the_csv(tmp_path):
    from intasr.deploy import fig2

    (tmp_path / "p.csv").write_text("metric,model,value,device,software,input\n"
                                    "speedup,QuartzNet-15x5,2.5,GPU X,Soft Y,10 s input\n")
    assert fig2.paper_statement(tmp_path / "p.csv").startswith("Paper (Fig. 2, Sec. 3.2): QuartzNet-15x5 INT8 2.50x")


def test_run_fig2_script_is_a_shell_over_the_library(tmp_path, monkeypatch, fig2_frame):
    """benchmarks/run_fig2.py: its options reach deploy.fig2.run, the CSV goes to --out and the plot
    beside it (or to --plot)."""
    import importlib.util

    from intasr import paths
    from intasr.deploy import fig2

    spec = importlib.util.spec_from_file_location("run_fig2", paths.REPO_ROOT / "benchmarks" / "run_fig2.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}

    def fake_run(models, repeats, threads, seconds, calibration_limit, audio):
        seen.update(models=models, repeats=repeats, threads=threads, seconds=seconds,
                    calibration_limit=calibration_limit, audio=audio)
        return fig2_frame

    monkeypatch.setattr(fig2, "run", fake_run)
    monkeypatch.setattr(fig2, "plot", lambda df, out: seen.update(plot=out))
    out = tmp_path / "f.csv"
    assert script.main(["--models", "quartznet5x5", "--repeats", "2", "--threads", "1", "2", "--seconds", "5",
                        "--calibration-limit", "3", "--audio", "random", "--out", str(out)]) == 0
    assert seen == {"models": ["quartznet5x5"], "repeats": 2, "threads": [1, 2], "seconds": 5.0,
                    "calibration_limit": 3, "audio": "random", "plot": out.with_suffix(".png")}
    pd.testing.assert_frame_equal(pd.read_csv(out), fig2_frame.reset_index(drop=True), check_dtype=False)
