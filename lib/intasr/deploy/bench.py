"""FP32 vs INT8 latency of one model, side by side in one process (paper Sec. 3.2 / Fig. 2).

Protocol (``bench``): one random normalized log-mel input of ``seconds`` of audio (T frames as
the model's front end would give, ``experiments.input_frames``), ``batch`` copies, quantized once
with the model's input scale. Every runtime is built first, warmed up (``warmup`` runs), then
timed ``repeats`` times *interleaved* (round r runs every runtime once, in an order rotated each
round) so that load from other processes hits all of them alike; we report median, quartiles
and IQR per runtime. ``fp32_ms`` is the fastest FP32 runtime's median, ``int8_ms`` the fastest
INT8 runtime whose logits equal ``forward_int`` bit for bit (checked once, on the timed input).

Runtimes (``RUNTIMES``):
  FP32: torch-fp32 (the float ConvASR as is), onnxruntime-fp32 (BN-folded ONNX graph),
        torch-fp32-fastdw (BN folded, depthwise as conv_transpose1d: our fastest float path).
  INT8 (lowerings of the integer program, ``program/``):
        onnxruntime-int8 (the integer-only ONNX graph, ``program/onnx_int.py``),
        torch+native-int8 (``program/fast.py``: torch._int_mm pointwise; depthwise conv +
        requantization fused in our C kernels, intops/native.py, and every requantization one fused
        pass: integer-only),
        torch-int8+fp32exact-dw (``program/fast.py`` with depthwise convs in float32 on integer values
        and torch int64 requantization: bit-exact by a bound, but not integer-only arithmetic),
        torch-int8-reference (``forward_int``; slow, opt-in),
        c-int8 (``program/c_backend.py``: the program exported to C and built here, called
        through ctypes: VNNI int8 dot products, fused requantization; integer-only; it runs
        on one thread while the load average is at least twice the cores: ``asrq_set_adaptive``).
  INT8 peers (float requantization, not bit-exact to the program; checked against FP32 by frame
        argmax agreement): onnxruntime-static-int8 (onnxruntime's own ``quantize_static`` model of
        the float graph, calibrated on real utterances of ``calibration_data``) for the conv
        models; onnxruntime-dynamic-int8 (``quantize_dynamic`` of a ``torch.onnx.export`` of the
        float model: int8 MatMul weights, float everything else, the recipe sherpa-onnx ships its
        int8 Conformer models with) for the Conformer. The peer's time is ``peer_ms``; ``c_vs_fp32``
        and ``c_vs_peer`` are the C runtime's speedups.
The Conformer (``CONFORMER_RUNTIMES``): torch-fp32, onnxruntime-fp32 (the torch.onnx.export of the
float model), onnxruntime-dynamic-int8, and the integer-only runtimes.
Settled turns (``settle``, the default; ``intasr bench --back-to-back`` turns it off): each timed run
comes after a pause of ``SETTLE_S`` and one untimed run of the same runtime. Measured here (hama
Conformer, 2 threads, one process, AMD EPYC Zen 4): onnxruntime's pool spins for tens of
milliseconds after its run, and a C run right after it took 25.4 ms against 12.8 ms after another
C run; torch right after onnxruntime took 133 ms against 60 ms after a 50 ms pause. A run right
after a pause pays for waking an idle core (C, 1 thread: 19.1 ms against 17.1 ms), so the untimed
run leaves every runtime timed in the steady state a deployment running it continuously sees.
Isolated (``isolate``: the float and quantized model files; ``intasr bench --isolate``): each
runtime lives in a worker process of its own, which loads the models, builds the runtime, makes the
same input and times its own calls; the rounds stay interleaved (the parent asks one worker at a
time for one timed run, after a pause that lets the previous worker's thread pool go idle). In one
process, the OpenMP pools of torch and of the C runtime and onnxruntime's pool stay alive between
their turns and may spin on the cores the next runtime needs; a deployment runs one runtime.
Latency covers the encoder + decoder (log-mel in, logits out), not the mel front end.
Memory (``intasr bench``, unless --no-memory): what each runtime adds to the resident set at its
peak, in a process of its own that loads the models, resets its peak, builds that runtime and runs it
once (``added_rss_mib``; ``base_rss_mib``: that process before the runtime).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

FP32_RUNTIMES = ("torch-fp32", "onnxruntime-fp32", "torch-fp32-fastdw")
INT8_RUNTIMES = ("onnxruntime-int8", "torch+native-int8", "torch-int8+fp32exact-dw", "c-int8")
# The default INT8 set. The torch runners (program/fast.py) are left out: their pointwise convs are
# torch._int_mm, which runs at about 0.7 GMAC/s on a CPU without VNNI (AMD EPYC Zen 3, torch 2.13:
# 392 ms for one 1008 x 512 x 512 product, 7 ms in float32), and where it is fast the C runtime is
# faster still (benchmarks/README.md); `--runtimes` still times them.
DEFAULT_INT8 = ("onnxruntime-int8", "c-int8")
PEER = "onnxruntime-static-int8"
PEER_DYNAMIC = "onnxruntime-dynamic-int8"
PEERS = (PEER, PEER_DYNAMIC)
REFERENCE = "torch-int8-reference"
RUNTIMES = FP32_RUNTIMES + INT8_RUNTIMES + PEERS + (REFERENCE,)
INTEGER_ONLY = {"onnxruntime-int8", "torch+native-int8", "c-int8", REFERENCE}
CONFORMER_RUNTIMES = ("torch-fp32", "onnxruntime-fp32", PEER_DYNAMIC, "c-int8", "onnxruntime-int8")


def default_runtimes(model) -> tuple[str, ...]:
    from ..quantize import is_conformer

    return CONFORMER_RUNTIMES if is_conformer(model) else FP32_RUNTIMES + DEFAULT_INT8 + (PEER,)


def machine_info() -> dict:
    """CPU model and flags of interest, VNNI and the C runtime's kernel family (the CPU-feature
    probe, ``intasr.cpu``: CPUID as this process sees it), cores, load average, library versions."""
    from ..cpu import ISA_ENV, cpu_features, kernel_family

    f = cpu_features()
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": f.model or platform.processor() or "unknown", "cpu_probe": f.source}
    if f.source != "none":
        info["cpu_flags"] = f.linux_flags()   # /proc/cpuinfo's spelling, as older bench JSON recorded
        info["vnni"] = f.vnni
    try:
        info["kernel_family"] = kernel_family()   # $ASRQ_ISA honoured
    except ValueError:   # an $ASRQ_ISA this CPU cannot run (the C runtime refuses it)
        info["kernel_family"] = "unknown"
    info["asrq_isa"] = os.environ.get(ISA_ENV) or None
    try:
        info["loadavg"] = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        pass
    import torch

    info["torch"] = torch.__version__
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median_ms": float(med), "q25_ms": float(q25), "q75_ms": float(q75), "iqr_ms": float(q75 - q25),
            "min_ms": float(a.min()), "mean_ms": float(a.mean()), "runs": int(a.size)}


def _runners(model, qmodel, names, threads, skipped: dict | None = None, peer: dict | None = None):
    """name -> (kind, callable(input) -> output). An INT8 runtime that cannot run (exactly) on
    this machine (onnxruntime's integer kernels without VNNI, no C compiler for the native
    kernels) is left out and its reason recorded in `skipped` (when given; else the error
    propagates)."""
    out = {}
    for n in names:
        try:
            r = _runner(model, qmodel, n, threads, peer)
            out[n] = r if len(r) == 3 else (*r, {})
        except (ValueError, OSError, RuntimeError, NotImplementedError, ImportError) as e:  # inexact / unbuildable
            if skipped is None or n not in INT8_RUNTIMES + PEERS:
                raise
            skipped[n] = f"{type(e).__name__}: {e}"
    return out


def _runner(model, qmodel, n, threads, peer: dict | None = None):
    """(kind, callable) of one runtime, or (kind, callable, info) where a runtime has more to record
    (the C runtime: the kernel family it chose); peer: static_int8_model's arguments (model_path,
    calibration_data, limit) for onnxruntime-static-int8."""
    import torch

    from ..program.fast import TorchIntegerRunner
    from ..quantize import is_conformer
    from .onnx_float import build_float_model
    from .runtime import OrtFloatRunner, OrtIntegerRunner, TorchFloatRunner

    if n == "torch-fp32":
        def f(mel, _m=model):
            with torch.inference_mode():
                lengths = torch.full((mel.shape[0],), mel.shape[-1], dtype=torch.int64)
                return _m.forward_features(mel, lengths)[0]
        return "fp32", f
    if n == "onnxruntime-fp32":
        if is_conformer(model):
            return "fp32", _torch_onnx_runner(float_export(model), threads)
        return "fp32", OrtFloatRunner(build_float_model(model), threads).run
    if n == PEER_DYNAMIC:
        return "int8-peer", _torch_onnx_runner(dynamic_int8_model(float_export(model)), threads)
    if n == "torch-fp32-fastdw":
        return "fp32", TorchFloatRunner(model, threads).run
    if n == "onnxruntime-int8":
        return "int8", OrtIntegerRunner(qmodel.program, threads).run
    if n == "torch+native-int8":
        return "int8", TorchIntegerRunner(qmodel.program, threads, depthwise="native").run
    if n == "c-int8":
        from ..program.c_backend import CRuntime

        rt = CRuntime(qmodel.program, threads)
        return "int8", rt.run, {"kernels": rt.isa}
    if n == PEER:
        from .runtime import OrtStaticInt8Runner, static_int8_model

        if not peer or not peer.get("model_path") or not peer.get("calibration_data"):
            raise ValueError("onnxruntime-static-int8 needs the float model's file and calibration data")
        path = static_int8_model(model, peer["model_path"], peer["calibration_data"], peer.get("limit"),
                                 progress=peer.get("progress", False))
        return "int8-peer", OrtStaticInt8Runner(path, threads).run
    if n == "torch-int8+fp32exact-dw":
        return "int8", TorchIntegerRunner(qmodel.program, threads, depthwise="float-exact").run
    if n == REFERENCE:
        def g(q, _q=qmodel):
            with torch.inference_mode():
                lengths = torch.full((q.shape[0],), q.shape[-1], dtype=torch.int64)
                return _q.forward_int(q, lengths)[0]
        return "int8", g
    raise ValueError(f"unknown runtime {n!r} (choose from {', '.join(RUNTIMES)})")


def _model_key(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def float_export(model, cache_dir=None) -> Path:
    """The FP32 ONNX export of a float model (``onnx_float.export_torch_onnx``), cached under
    cache_dir (default build/ort_float) by the model's weights."""
    from ..paths import build_dir
    from .onnx_float import export_torch_onnx

    out = Path(cache_dir or build_dir() / "ort_float") / f"fp32_{_model_key(model)}.onnx"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        export_torch_onnx(model, tmp)
        os.replace(tmp, out)
    return out


def dynamic_int8_model(fp32_path: Path) -> Path:
    """onnxruntime's ``quantize_dynamic`` (int8 weights, QInt8) of an FP32 ONNX file, beside it."""
    out = Path(fp32_path).with_name(Path(fp32_path).stem.replace("fp32", "dyn_int8") + ".onnx")
    if not out.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = out.with_name(out.name + f".tmp{os.getpid()}.onnx")
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8)
        os.replace(tmp, out)
    return out


def _torch_onnx_runner(path: Path, threads):
    """run(mel) of an export with inputs (mel, lengths): every frame valid."""
    from ..program.onnx_graph import make_session

    session = make_session(Path(path), threads)

    def run(mel):
        x = _as_np(mel).astype(np.float32)
        return session.run(None, {"mel": x, "lengths": np.full(x.shape[0], x.shape[-1], dtype=np.int64)})[0]
    return run


def _as_np(y):
    return y.numpy() if hasattr(y, "numpy") else np.asarray(y)


def bench_input(model, seconds: float, batch: int, seed: int = 0, audio=None):
    """(float log-mel [batch, F, T] of `seconds`, what it is): the model's front end on real speech
    (utterances of the folder / manifest `audio` joined, then cut to length) when given, else random
    normal values. The AVX2 kernels' time depends a little on the values (inputs outside their
    window), so speech is what the README's timings use."""
    import torch

    from ..experiments import input_frames

    T = input_frames(model, seconds)
    if audio is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, model.encoder.feat_in, T, generator=g), "random normal log-mel"
    from ..audio import load_audio
    from ..data import load_dataset

    need, waves, names = int(seconds * 16000), [], []
    for u in load_dataset(audio, require_text=False):
        waves.append(load_audio(u.audio_path))
        names.append(u.id)
        if sum(len(w) for w in waves) >= need:
            break
    x = np.concatenate(waves)[:need]
    if len(x) < need:
        raise ValueError(f"{audio}: less than {seconds:g} s of audio")
    with torch.inference_mode():
        mel, _ = model.features(torch.from_numpy(x)[None], torch.tensor([need]))
    mel = mel[:, :, :T].repeat(batch, 1, 1)
    return mel, f"speech: {' + '.join(names)} ({seconds:g} s)"


SETTLE_S = 0.05   # before a settled turn: longer than the OpenMP / onnxruntime spin-wait


def turns_of(run) -> str:
    """"settled" or "back-to-back": how a run's timed calls followed each other, from its ``bench``
    result (a dict) or its tidy CSV rows (a DataFrame); runs made before ``settle`` existed have no
    record of it and timed back to back."""
    if isinstance(run, dict):
        turns = run.get("turns")
    else:
        recorded = run["turns"].dropna() if "turns" in run else []
        turns = recorded.iloc[0] if len(recorded) else None
    return "settled" if turns == "settled" else "back-to-back"


def _isolated_worker(conn, model_path, quantized_path, name, threads, seconds, batch, seed, audio, peer) -> None:
    """One runtime in a process of its own (``bench(isolate=...)``): sends ("ready", kind, info,
    output on the input) or ("error", reason), then answers each "run" with one call's milliseconds
    ("settled run": one untimed call first)."""
    try:
        import torch

        from ..integer_model import load_quantized
        from ..models.checkpoint import load_model

        torch.set_num_threads(threads)
        model, qmodel = load_model(model_path), load_quantized(quantized_path)
        mel, _ = bench_input(model, seconds, batch, seed, audio)
        kind, fn, *info = _runner(model, qmodel, name, threads, peer)
        x = qmodel.quantize_input(mel) if kind == "int8" else mel
        conn.send(("ready", kind, info[0] if info else {}, _as_np(fn(x))))
    except (ValueError, OSError, RuntimeError, NotImplementedError, ImportError) as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while (msg := conn.recv()) != "stop":
        if msg == "settled run":
            fn(x)
        t0 = time.perf_counter()
        fn(x)
        conn.send((time.perf_counter() - t0) * 1e3)


class _Isolated:
    """The workers of ``bench(isolate=...)``: name -> (kind, info, output) once ready, ``time(name)``."""

    def __init__(self, files, names, threads, seconds, batch, seed, audio, peer, skipped: dict):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conns, self.procs, self.ready = {}, {}, {}
        for n in names:   # built one after the other: each build has the machine to itself
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_isolated_worker, daemon=True,
                               args=(child, str(files[0]), str(files[1]), n, threads, seconds, batch, seed, audio, peer))
            proc.start()
            msg = parent.recv() if parent.poll(3600) else ("error", "no answer in an hour")
            if msg[0] != "ready":
                proc.join(5)
                if n not in INT8_RUNTIMES + PEERS:
                    self.close()   # the workers already started
                    raise RuntimeError(f"{n}: {msg[1]}")
                skipped[n] = msg[1]
                continue
            self.conns[n], self.procs[n], self.ready[n] = parent, proc, msg[1:]

    def time(self, name: str, settle: bool = True) -> float:
        time.sleep(SETTLE_S)   # settled or not, the previous worker's pool goes idle first
        self.conns[name].send("settled run" if settle else "run")
        return self.conns[name].recv()

    def close(self) -> None:
        for n, c in self.conns.items():
            c.send("stop")
            self.procs[n].join(10)


def bench(model, qmodel, seconds: float = 10.0, batch: int = 1, threads: int = 1, repeats: int = 20,
          warmup: int = 3, runtimes=FP32_RUNTIMES + DEFAULT_INT8, seed: int = 0, progress: bool = False,
          peer: dict | None = None, audio=None, isolate=None, settle: bool = True) -> dict:
    """Time FP32 and INT8 runtimes of one model side by side (module doc). Returns a JSON-able dict.
    audio: a folder / manifest whose speech is the input (``bench_input``), else random values.
    isolate: (float model file, quantized model file): each runtime in a process of its own (module doc).
    settle: each timed run after a pause and one untimed run of the same runtime (module doc)."""
    import torch

    if repeats < 1 or batch < 1 or threads < 1:
        raise ValueError("repeats, batch and threads must be >= 1")
    torch.set_num_threads(threads)
    load_before = machine_info().get("loadavg")
    mel, input_desc = bench_input(model, seconds, batch, seed, audio)
    T = int(mel.shape[-1])
    q = qmodel.quantize_input(mel)
    skipped: dict = {}
    pool = None
    if isolate:
        pool = _Isolated(isolate, list(runtimes), threads, seconds, batch, seed, audio, peer, skipped)
        runners = {n: (kind, None, info) for n, (kind, info, _) in pool.ready.items()}
    else:
        runners = _runners(model, qmodel, list(runtimes), threads, skipped, peer)
    for n, why in skipped.items():
        if progress:
            print(f"{n}: skipped ({why})", flush=True)
    if not runners:
        raise ValueError("no runtime left to time: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    inputs = {"fp32": mel, "int8": q, "int8-peer": mel}

    # correctness, once, on the timed input
    with torch.inference_mode():
        lengths = torch.full((batch,), T, dtype=torch.int64)
        ref_int = qmodel.forward_int(q, lengths)[0].numpy()
        ref_fp = model.forward_features(mel, lengths)[0].numpy()
    checks = {}
    for name, (kind, fn, _) in runners.items():
        y = pool.ready[name][2] if pool else _as_np(fn(inputs[kind]))
        if kind == "int8":
            same_shape = y.shape == ref_int.shape
            checks[name] = {"bit_exact": bool(same_shape and np.array_equal(y.astype(np.int64), ref_int)),
                            "logits_differ": int((y != ref_int).sum()) if same_shape else int(ref_int.size),
                            "logits": int(ref_int.size)}
        else:
            checks[name] = {"max_abs_diff_vs_torch": float(np.abs(y - ref_fp).max()),
                            "max_abs_logit": float(np.abs(ref_fp).max())}
            if kind == "int8-peer":
                checks[name]["argmax_agreement_vs_fp32"] = float((y.argmax(1) == ref_fp.argmax(1)).mean())
        for _ in range(max(0, warmup - 1)):
            pool.time(name, False) if pool else fn(inputs[kind])

    def timed(n: str) -> float:
        if pool:
            return pool.time(n, settle)
        kind, fn, _ = runners[n]
        if settle:
            time.sleep(SETTLE_S)
            fn(inputs[kind])
        t0 = time.perf_counter()
        fn(inputs[kind])
        return (time.perf_counter() - t0) * 1e3

    names = list(runners)
    times = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            times[n].append(timed(n))
        if progress:
            print(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.0f}" for n in names), flush=True)

    if pool:
        pool.close()
    results = {}
    for n in names:
        kind = runners[n][0]
        results[n] = {"precision": kind, "integer_only": n in INTEGER_ONLY if kind.startswith("int8") else None,
                      **_stats(times[n]), **checks[n], **runners[n][2]}
    fp = {n: r for n, r in results.items() if r["precision"] == "fp32"}
    i8 = {n: r for n, r in results.items() if r["precision"] == "int8" and r["bit_exact"]}
    i8_int = {n: r for n, r in i8.items() if r["integer_only"]}
    best = lambda d: min(d, key=lambda n: d[n]["median_ms"]) if d else None  # noqa: E731
    fp_best, i8_best, i8_int_best = best(fp), best(i8), best(i8_int)
    out = {
        "model": getattr(model, "name", None) or model.__class__.__name__,
        "seconds": seconds, "frames": T, "input": input_desc, "batch": batch, "threads": threads, "repeats": repeats,
        "warmup": warmup, "protocol": "isolated" if isolate else "one process",
        "turns": "settled" if settle else "back to back",
        "fp32_runtime": fp_best, "fp32_ms": fp[fp_best]["median_ms"] if fp_best else None,
        "int8_runtime": i8_best, "int8_ms": i8[i8_best]["median_ms"] if i8_best else None,
        "int8_integer_only_runtime": i8_int_best,
        "int8_integer_only_ms": i8_int[i8_int_best]["median_ms"] if i8_int_best else None,
        "runtimes": results, "skipped": skipped, "machine": machine_info(), "loadavg_before": load_before,
    }
    out["speedup"] = out["fp32_ms"] / out["int8_ms"] if out["fp32_ms"] and out["int8_ms"] else None
    out["speedup_integer_only"] = (out["fp32_ms"] / out["int8_integer_only_ms"]
                                   if out["fp32_ms"] and out["int8_integer_only_ms"] else None)
    ms = lambda n: results[n]["median_ms"] if n in results else None  # noqa: E731
    c_ok = "c-int8" in i8
    out["c_int8_ms"] = ms("c-int8") if c_ok else None
    peer_name = next((n for n in PEERS if n in results), None)
    out["peer_runtime"], out["peer_ms"] = peer_name, ms(peer_name) if peer_name else None
    out["c_vs_fp32"] = out["fp32_ms"] / out["c_int8_ms"] if out["fp32_ms"] and out["c_int8_ms"] else None
    out["c_vs_peer"] = out["peer_ms"] / out["c_int8_ms"] if out["peer_ms"] and out["c_int8_ms"] else None
    out["loadavg_after"] = out["machine"].get("loadavg")
    return out


def format_report(res: dict) -> str:
    lines = [f"{res['seconds']:g} s input ({res['frames']} frames), batch {res['batch']}, {res['threads']} thread(s), "
             f"{res['repeats']} interleaved runs ({res.get('turns', 'back to back')} turns); load avg before/after {res.get('loadavg_before')} / "
             f"{res.get('loadavg_after')} on {res['machine'].get('cpu_count')} cores ({res['machine'].get('cpu_model')})"]
    for n, r in res["runtimes"].items():
        extra = (f"bit-exact {r['bit_exact']} ({r['logits_differ']} of {r['logits']} logits differ)"
                 if r["precision"] == "int8" else f"max |diff| vs torch {r['max_abs_diff_vs_torch']:.2e}")
        if r.get("kernels"):
            extra += f", kernels {r['kernels']}"
        if r.get("added_rss_mib") is not None:
            extra += f", +{r['added_rss_mib']:.0f} MiB at its peak"
        if "argmax_agreement_vs_fp32" in r:
            extra += f", frame argmax = FP32's on {100 * r['argmax_agreement_vs_fp32']:.1f}%"
        lines.append(f"  {n:26s} {r['precision']}  median {r['median_ms']:8.1f} ms  IQR {r['q25_ms']:.1f}-{r['q75_ms']:.1f}  {extra}")
    for n, why in (res.get("skipped") or {}).items():
        lines.append(f"  {n:26s} skipped: {why}")
    if res["speedup"]:
        lines.append(f"FP32 {res['fp32_ms']:.1f} ms ({res['fp32_runtime']}) vs INT8 {res['int8_ms']:.1f} ms "
                     f"({res['int8_runtime']}): {res['speedup']:.2f}x")
    if res["speedup_integer_only"]:
        lines.append(f"integer-only INT8 {res['int8_integer_only_ms']:.1f} ms ({res['int8_integer_only_runtime']}): "
                     f"{res['speedup_integer_only']:.2f}x")
    if res.get("c_vs_fp32"):
        lines.append(f"C runtime (c-int8, {res['runtimes']['c-int8'].get('kernels')} kernels) {res['c_int8_ms']:.1f} ms: "
                     f"{res['c_vs_fp32']:.2f}x faster than FP32"
                     + (f", {res['c_vs_peer']:.2f}x faster than {res['peer_runtime']} ({res['peer_ms']:.1f} ms)"
                        if res.get("c_vs_peer") else ""))
    return "\n".join(lines)


def peak_memory(model_path, quantized_path, runtimes, threads: int, seconds: float, peer: dict | None = None) -> dict:
    """{runtime: the MiB a runtime adds to the resident set at its peak: a process loads both models,
    then (Linux) resets its peak (/proc/self/clear_refs), builds that runtime and runs it once on
    `seconds` of random input; the peak minus the resident set before}, and "base": the resident MiB
    of such a process before the runtime (torch, the models)."""
    import subprocess
    import sys

    out = {}
    for n in ("base", *runtimes):
        cmd = [sys.executable, "-m", "intasr.deploy.bench", "--memory-child", str(model_path), str(quantized_path),
               n, str(threads), str(seconds), json.dumps(peer or {})]
        r = subprocess.run(cmd, capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        ok = r.returncode == 0 and last.startswith("{")
        out[n] = json.loads(last)["base_mib" if n == "base" else "added_mib"] if ok else None
    return out


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def _memory_child(model_path, quantized_path, name, threads, seconds, peer) -> None:
    import torch

    from ..integer_model import load_quantized
    from ..models.checkpoint import load_model

    torch.set_num_threads(threads)
    model, qmodel = load_model(model_path), load_quantized(quantized_path)
    mel, _ = bench_input(model, seconds, 1)
    Path("/proc/self/clear_refs").write_text("5")   # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    if name != "base":
        kind, fn, *_ = _runner(model, qmodel, name, threads, peer)
        fn(qmodel.quantize_input(mel) if kind == "int8" else mel)
    print(json.dumps({"base_mib": base / 1024, "added_mib": (_status_kib("VmHWM") - base) / 1024}))


if __name__ == "__main__":   # peak_memory's child process
    import sys

    if sys.argv[1:2] == ["--memory-child"]:
        a = sys.argv[2:]
        _memory_child(a[0], a[1], a[2], int(a[3]), float(a[4]), json.loads(a[5]))
