#!/usr/bin/env python
"""NeMo-architecture Conformer-CTC (Conv2d striding subsampling x4, rel_pos attention, xscaling)
through the integer-only program: integer vs float agreement, small and large, W8A8 and W6A8.

    .venv/bin/python tools/conformer_nemo_check.py                    # defaults below (~5 min, 1 thread)
    .venv/bin/python tools/conformer_nemo_check.py --sizes small --eval-utts 2    # quicker

What it does
------------
1. `conformer_ctc_{small,large}` (models/configs.py: NeMo's conformer_ctc_bpe.yaml sizes, 128 BPE
   placeholder classes) with random weights, normal init: every matrix ~ N(0, 1/fan_in), every
   vector (biases, LayerNorm / BatchNorm affine, pos_bias_u / v) = its default + 0.2 N(0, 1).
2. BatchNorm running statistics from real audio: `--bn-utts` train-clean-100 utterances (a seeded
   permutation), each cropped to its first `--bn-crop-s` seconds (all at least that long, so the
   batch has no padding) and one training-mode pass with cumulative averaging: each BN stores the
   statistics it normalized with, so every later layer already saw normalized inputs (sequential,
   no approximation).
3. Real calibration (min/max observers) on `--calib-utts` other train-clean-100 utterances (full
   length, batches of 4), then `convert_conformer` for W8A8 and W6A8, each with the default 8-bit
   attention probabilities and with 16-bit ones (`prob_bits`: with 8 bits a probability below
   2^-9 rounds to 0, which flat attention over hundreds of frames feels), and with 16-bit
   probabilities and a 16-bit residual stream (`residual_bits`).
4. A check that the float walk (FloatTaps) equals ConformerCTC on the first eval utterance.
5. Baseline for the sensitivity of a random network: the float model fed only the rounded input
   (the program's input quantization, dequantized), same metrics.
6. Agreement on `--eval-utts` test-other utterances (evenly spaced in id order, full length, one at a
   time): relative L2 error of the dequantized logits (int logits * logit_scale vs float logits,
   valid frames) and frame argmax agreement, per utterance and pooled.

Writes results/conformer_nemo_check.json and prints a summary table.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from intasr import paths
from intasr.convert_conformer import calibrate_conformer, convert_conformer, float_forward
from intasr.data import load_batch, read_librispeech
from intasr.models import ConformerCTC, conformer_ctc_config

T0 = time.time()
ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f} s] {msg}", flush=True)


def random_model(size: str, seed: int) -> ConformerCTC:
    torch.manual_seed(seed)
    model = ConformerCTC(conformer_ctc_config(size))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("preprocessor"):
                continue
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def fill_bn(model: ConformerCTC, mel: torch.Tensor, lengths: torch.Tensor) -> None:
    """One training-mode pass, cumulative average (momentum None): the stored statistics are the
    ones each BN normalized with (no padding in `mel`, so none is counted)."""
    assert bool((lengths == lengths[0]).all()), "BN batch must be unpadded"
    mel = mel[:, :, : int(lengths[0])]   # the front end emits one frame beyond the valid length
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    model.encoder.train()
    with torch.no_grad():
        model.encoder(mel, lengths)
    model.eval()


def agreement(ref: torch.Tensor, deq: torch.Tensor) -> dict:
    """ref, deq: [C, T] valid frames of one utterance."""
    f, d = ref.double(), deq.double()
    return {"frames": int(f.shape[1]), "sq_err": float(((d - f) ** 2).sum()), "sq_ref": float((f ** 2).sum()),
            "agree": int((d.argmax(0) == f.argmax(0)).sum()),
            "rel_l2": float((d - f).norm() / f.norm()), "argmax_agreement": float((d.argmax(0) == f.argmax(0)).double().mean())}


def pooled(rows: list[dict]) -> dict:
    frames = sum(r["frames"] for r in rows)
    return {"rel_l2": (sum(r["sq_err"] for r in rows) / sum(r["sq_ref"] for r in rows)) ** 0.5,
            "argmax_agreement": sum(r["agree"] for r in rows) / frames, "frames": frames,
            "rel_l2_per_utt_median": float(np.median([r["rel_l2"] for r in rows]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "LibriSpeech"))
    ap.add_argument("--sizes", nargs="+", default=["small", "large"])
    ap.add_argument("--bits", nargs="+", default=["8,8", "6,8", "8,8,16", "6,8,16", "8,8,16,16", "6,8,16,16"],
                    help="weight,act[,prob[,residual]] bits (prob: attention probabilities, residual: the "
                         "residual stream; both default act)")
    ap.add_argument("--bn-utts", type=int, default=16)
    ap.add_argument("--bn-crop-s", type=float, default=4.0)
    ap.add_argument("--calib-utts", type=int, default=8)
    ap.add_argument("--eval-utts", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "conformer_nemo_check.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)

    train = read_librispeech(data / "train-clean-100", require_text=False)
    order = list(range(len(train)))
    random.Random(args.seed).shuffle(order)
    bn_utts, calib_utts = [], []
    for i in order:   # BN utterances: at least bn_crop_s long (an unpadded batch after the crop)
        u = train[i]
        if len(bn_utts) < args.bn_utts:
            audio, n = load_batch([u])
            if int(n[0]) >= args.bn_crop_s * 16000:
                bn_utts.append(u)
                continue
        if len(calib_utts) < args.calib_utts:
            calib_utts.append(u)
        if len(bn_utts) == args.bn_utts and len(calib_utts) == args.calib_utts:
            break
    test = read_librispeech(data / "test-other")
    step = max(1, len(test) // args.eval_utts)   # evenly spread over the (speaker-sorted) split
    eval_utts = test[::step][: args.eval_utts]
    log(f"BN: {len(bn_utts)} train-clean-100 utts cropped to {args.bn_crop_s} s; calibration: {len(calib_utts)} "
        f"others; eval: {len(eval_utts)} test-other ({', '.join(u.id for u in eval_utts)})")

    bn_audio, bn_len = load_batch(bn_utts)
    n = int(args.bn_crop_s * 16000)
    bn_audio, bn_len = bn_audio[:, :n].contiguous(), torch.full_like(bn_len, n)
    calib_audio = [load_batch(calib_utts[i:i + 4]) for i in range(0, len(calib_utts), 4)]
    eval_audio = [load_batch([u]) for u in eval_utts]

    report = {"settings": {k: paths.display_path(v) if k in ("data", "out") else v for k, v in vars(args).items()},
              "bn_utts": [u.id for u in bn_utts],
              "calib_utts": [u.id for u in calib_utts], "eval_utts": [u.id for u in eval_utts], "models": {}}
    for size in args.sizes:
        model = random_model(size, args.seed)
        with torch.no_grad():
            fill_bn(model, *model.features(bn_audio, bn_len))
            calib = [model.features(a, l) for a, l in calib_audio]
            evals = [model.features(a, l) for a, l in eval_audio]
            ref = [model.forward_features(m, l) for m, l in evals]
            walk, _ = float_forward(model, *evals[0])
        walk_diff = float((walk - ref[0][0]).abs().max())
        enc = model.config["encoder"]
        entry = {"params": sum(p.numel() for p in model.parameters()), "float_walk_max_abs_diff": walk_diff,
                 "encoder": {k: enc[k] for k in ("d_model", "n_layers", "n_heads", "subsampling", "subsampling_factor",
                                                 "self_attention_model", "xscaling", "pos_emb_max_len")},
                 "bits": {}}
        log(f"{size}: {entry['params'] / 1e6:.1f} M params, float walk vs model max |diff| {walk_diff:.2e}")
        observers = calibrate_conformer(model, calib)
        for spec in args.bits:
            wb, ab, *rest = (int(v) for v in spec.split(","))
            pb, rb = (rest + [ab, ab])[:2]
            t = time.time()
            qmodel = convert_conformer(model, observers, wb, ab, prob_bits=pb, residual_bits=rb)
            t_conv = time.time() - t
            key = f"W{wb}A{ab}" + (f" probs {pb}" if pb != ab else "") + (f" residual {rb}" if rb != ab else "")
            rows = []
            t = time.time()
            for u, (mel, l), (f, fl) in zip(eval_utts, evals, ref):
                with torch.inference_mode():
                    lg, ll = qmodel.forward_int(qmodel.quantize_input(mel), l)
                assert torch.equal(ll, fl)
                k = int(ll[0])
                r = agreement(f[0, :, :k], lg[0, :, :k].double() * qmodel.logit_scale)
                rows.append({"utt": u.id, "seconds": float(l[0]) / 16000, **r})
            t_eval = time.time() - t
            base = []   # how chaotic the random network is: the float model fed the rounded input only
            for (mel, l), (f, fl) in zip(evals, ref):
                with torch.no_grad():
                    g, _ = model.forward_features(qmodel.quantize_input(mel).double().float() * qmodel.input_scale, l)
                base.append(agreement(f[0, :, : int(fl[0])], g[0, :, : int(fl[0])]))
            kinds = sorted({op.kind for op in qmodel.program.ops})
            entry["bits"][key] = {"prob_bits": pb, "residual_bits": rb, "pooled": pooled(rows),
                                  "float_model_on_rounded_input": pooled(base), "per_utterance": rows, "ops": len(qmodel.program.ops),
                                           "op_kinds": kinds, "int64_layers": qmodel.int64_layers(),
                                           "convert_s": round(t_conv, 1), "eval_s": round(t_eval, 1)}
            p = entry["bits"][key]["pooled"]
            log(f"{size} {key}: rel L2 {p['rel_l2']:.4f}, argmax agreement {p['argmax_agreement']:.4f} "
                f"({p['frames']} frames; convert {t_conv:.0f} s, eval {t_eval:.0f} s)")
        report["models"][f"conformer_ctc_{size}"] = entry
        del model

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("\nmodel                  bits                        rel L2 (dequantized logits)   frame argmax agreement   frames"
          "   (float model, rounded input only: rel L2 / argmax)")
    for name, entry in report["models"].items():
        for bits, r in entry["bits"].items():
            p, b = r["pooled"], r["float_model_on_rounded_input"]
            print(f"{name:22s} {bits:27s} {p['rel_l2']:>12.4f}                 {p['argmax_agreement']:>10.4f}"
                  f"              {p['frames']}      {b['rel_l2']:.4f} / {b['argmax_agreement']:.4f}")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
