"""Bit-exactness of every INT8 runtime against ``forward_int`` on real audio, and how far the
Q/DQ (TensorRT form, simulated int8 in float) graph is from the integer model.

    .venv/bin/python benchmarks/check_exact.py --quantized Q.aqz [--limit 40] [--json OUT]

Each test-other utterance runs alone (batch 1; the graphs take lengths and mask padded batches too,
tests/test_deploy.py checks that).
Per utterance and runtime: number of integer logits that differ from ``forward_int`` and
whether the greedy CTC transcript changes. Q/DQ: max |logit difference| in units of the integer
logit scale, frames whose argmax differs, transcript changes (onnxruntime CPU, float).

Where onnxruntime's integer kernels are not exact (``ort_kernels_exact()``: a CPU without VNNI),
``onnxruntime-int8`` is not run: the JSON's ``skipped`` records why, and the script still exits 0.
``machine`` records the CPU as the CPU-feature probe sees it (``intasr.provenance.machine``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from intasr import paths
from intasr.integer_model import load_quantized
from intasr.data import load_batch, load_dataset
from intasr.deploy.runtime import OrtIntegerRunner, make_session, ort_kernels_exact
from intasr.provenance import machine
from intasr.program.fast import TorchIntegerRunner
from intasr.program.onnx_qdq import build_qdq_model
from intasr.text import ctc_greedy_decode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantized", required=True)
    p.add_argument("--data", default=str(paths.librispeech("test-other")))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "exactness_test_other.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    qmodel = load_quantized(args.quantized)
    program = qmodel.program
    runners, skipped = {}, {}
    if ort_kernels_exact(args.threads):
        runners["onnxruntime-int8"] = OrtIntegerRunner(program, args.threads)
    else:
        skipped["onnxruntime-int8"] = ("onnxruntime's integer kernels are not exact on this CPU (ort_kernels_exact() "
                                       "is False: no VNNI, U8S8 pairs of products saturate at int16)")
        print(f"skipped onnxruntime-int8: {skipped['onnxruntime-int8']}", flush=True)
    runners["torch+native-int8"] = TorchIntegerRunner(program, args.threads, depthwise="native")
    runners["torch-int8+fp32exact-dw"] = TorchIntegerRunner(program, args.threads, depthwise="float-exact")
    qdq = {"qdq-uint8": make_session(build_qdq_model(program), args.threads),
           "qdq-int8-trt": make_session(build_qdq_model(program, signed_only=True), args.threads)}
    utts = load_dataset(args.data, limit=args.limit)
    stats = {n: {"logits": 0, "differ": 0, "transcripts_changed": 0} for n in runners}
    stats.update({n: {"frames": 0, "argmax_differ": 0, "max_abs_diff_units": 0.0, "transcripts_changed": 0}
                  for n in qdq})
    t0 = time.time()
    for i, u in enumerate(utts):
        wav, lengths = load_batch([u])
        with torch.inference_mode():
            mel, mel_len = qmodel.features(wav, lengths)
            q = qmodel.quantize_input(mel[:, :, : int(mel_len[0])])
            ref, ref_len = qmodel.forward_int(q, mel_len)
        ref = ref.numpy()
        text = ctc_greedy_decode(torch.from_numpy(ref), ref_len, qmodel.labels, time_axis=2)[0]
        for n, r in runners.items():
            y = np.asarray(r.run(q))
            s = stats[n]
            s["logits"] += ref.size
            s["differ"] += int((y != ref).sum())
            s["transcripts_changed"] += ctc_greedy_decode(torch.from_numpy(y), ref_len, qmodel.labels, time_axis=2)[0] != text
        melf = mel[:, :, : int(mel_len[0])].numpy()
        for n, sess in qdq.items():
            y = sess.run(None, {"mel": melf, "lengths": mel_len.numpy().astype(np.int64)})[0] / qmodel.logit_scale
            s = stats[n]
            s["frames"] += ref.shape[-1]
            s["argmax_differ"] += int((y.argmax(1) != ref.argmax(1)).sum())
            s["max_abs_diff_units"] = max(s["max_abs_diff_units"], float(np.abs(y - ref).max()))
            s["transcripts_changed"] += ctc_greedy_decode(torch.from_numpy(y), ref_len, qmodel.labels, time_axis=2)[0] != text
        print(f"{i + 1}/{len(utts)} {u.id} ({time.time() - t0:.0f} s)", flush=True)
    for s in stats.values():
        s["transcripts_changed"] = int(s["transcripts_changed"])
    res = {"quantized": paths.display_path(args.quantized), "utterances": len(utts),
           "data": paths.display_path(args.data),
           "runtimes": stats, "skipped": skipped, "machine": machine()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
