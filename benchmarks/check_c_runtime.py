"""The C runtime's CLI against ``forward_int`` on real audio: tokens, every logit, WER (PER for a
phoneme model such as the hama Conformer).

    .venv/bin/python benchmarks/check_c_runtime.py --quantized Q.aqz [--limit 40] [--json OUT]

Exports Q's program with ``intasr export --c`` into a folder, builds it with ``make`` (the
CLI, -O3 -march=native), then for each test-other utterance (batch 1): the float front end and
the input quantization in Python (as ``forward_int``'s callers do), the quantized log-mel written
as the CLI's input file, ``asrq model.bin input.q8 --logits out.bin`` run as a process; its
printed tokens are compared with the greedy CTC tokens of ``forward_int``'s logits and its dumped
int64 logits with those logits, every one; both logits are decoded and scored as ``evaluate`` does
(``decode_batch``, ``score``). Writes benchmarks/results/c_runtime_test_other.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from intasr import paths
from intasr.cli import main as cli_main
from intasr.integer_model import load_quantized
from intasr.data import load_batch, load_dataset
from intasr.program.c_backend import read_logits, write_input
from intasr.provenance import provenance
from intasr.evaluate import decode_batch, score
from intasr.text import ctc_greedy_tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantized", required=True)
    p.add_argument("--data", default=str(paths.librispeech("test-other")))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=None, help="the exported C folder (default: a temporary one)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "c_runtime_test_other.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    qmodel = load_quantized(args.quantized)
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out_dir or Path(tmp.name) / "c")
    with contextlib.redirect_stdout(io.StringIO()) as said:   # it names the (temporary) folder
        assert cli_main(["export", args.quantized, "--c", str(out)]) == 0
    shown = paths.display_path(out) if args.out_dir else "<temporary folder>/c"
    print(said.getvalue().replace(str(out), shown), end="")
    subprocess.run(["make", "-s", "-C", str(out), "asrq"], check=True)
    isa = subprocess.run([str(out / "asrq"), "--isa"], capture_output=True, text=True, check=True).stdout.strip()
    utts = load_dataset(args.data, limit=args.limit)
    rows, hyps_c, hyps_ref = [], [], []
    t0 = time.time()
    for i, u in enumerate(utts):
        wav, lengths = load_batch([u])
        with torch.inference_mode():
            mel, mel_len = qmodel.features(wav, lengths)
            q = qmodel.quantize_input(mel[:, :, : int(mel_len[0])])
            ref, ref_len = qmodel.forward_int(q, torch.tensor([q.shape[-1]]))
        ref, valid = ref[0].numpy().astype(np.int64), int(ref_len[0])
        inp = write_input(Path(tmp.name) / "in.q8", q[0].numpy())
        r = subprocess.run([str(out / "asrq"), str(out / "model.bin"), str(inp), "-t", str(args.threads),
                            "--logits", str(Path(tmp.name) / "logits.bin")], capture_output=True, text=True, check=True)
        tokens = [int(t) for t in re.search(r"^tokens:(.*)$", r.stdout, re.M).group(1).split()]
        logits, valid_c = read_logits(Path(tmp.name) / "logits.bin")
        same_shape = logits.shape == ref.shape
        ids_ref = ctc_greedy_tokens(torch.from_numpy(ref[None]), torch.tensor([valid]), range(len(qmodel.labels)),
                                    time_axis=2)[0]   # class ids: the "labels" are the ids themselves
        hyp_ref = decode_batch(qmodel, torch.from_numpy(ref[None]), torch.tensor([valid]))[0]
        hyp_c = decode_batch(qmodel, torch.from_numpy(logits[None]), torch.tensor([valid_c]))[0]
        rows.append({"id": u.id, "frames": int(q.shape[-1]), "tokens_equal": tokens == ids_ref,
                     "valid_frames_equal": valid_c == valid, "logits": int(ref.size),
                     "logits_differ": int((logits != ref).sum()) if same_shape else int(ref.size),
                     "text_equal": hyp_c == hyp_ref})
        hyps_c.append(hyp_c)
        hyps_ref.append(hyp_ref)
        print(f"{i + 1}/{len(utts)} {u.id}: tokens equal {rows[-1]['tokens_equal']}, "
              f"{rows[-1]['logits_differ']} of {ref.size} logits differ ({time.time() - t0:.0f} s)", flush=True)
    res = {"quantized": paths.display_path(args.quantized), "data": paths.display_path(args.data),
           "utterances": len(rows),
           "command": "asrq model.bin input.q8 --logits out.bin (make -C DIR asrq: -O3 -march=native -fopenmp)",
           "threads": args.threads, "kernels": isa,
           "tokens_equal": sum(r["tokens_equal"] for r in rows), "text_equal": sum(r["text_equal"] for r in rows),
           "logits": sum(r["logits"] for r in rows), "logits_differ": sum(r["logits_differ"] for r in rows),
           "wer_c_runtime": _summary(qmodel, utts, hyps_c), "wer_forward_int": _summary(qmodel, utts, hyps_ref),
           "per_utterance": rows,
           # model_sha256 is the .aqz file's; eval_* fingerprint the utterances checked
           "provenance": provenance(args.quantized, utts, {"run_threads": args.threads, "limit": args.limit})}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"{res['tokens_equal']}/{len(rows)} token sequences equal, {res['logits_differ']} of {res['logits']} "
          f"logits differ; {_rate(res['wer_c_runtime'])} (C) vs {_rate(res['wer_forward_int'])} (forward_int)")
    return 0 if res["tokens_equal"] == len(rows) and res["logits_differ"] == 0 else 1


def _summary(qmodel, utts, hyps) -> dict:
    summary = score(qmodel, utts, hyps)
    summary.pop("transcripts", None)   # the hypotheses are compared per utterance above
    return summary


def _rate(summary: dict) -> str:
    name = "per" if "per" in summary else "wer"
    return f"{name.upper()} {summary.get(name)}"


if __name__ == "__main__":
    sys.exit(main())
