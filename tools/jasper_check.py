#!/usr/bin/env python
"""JasperDR-10x5 through the integer-only engine, with the real QuartzNet-15x5 for comparison.

    .venv/bin/python tools/jasper_check.py                 # defaults below (~15-25 min on 2 cores)
    .venv/bin/python tools/jasper_check.py --skip-quartznet --eval-utts 2   # quicker

What it does
------------
1. JasperDR-10x5 from NeMo itself: `EncDecCTCModel(config_for('jasperdr10x5'))` with NeMo's own
   random initialization (torch seeded), `save_to` build/jasperdr10x5_random.nemo, then loaded with
   `intasr.models.load_model` (no NeMo at inference).
2. BatchNorm statistics restored from real training-split audio (train-clean-100, the first
   `--bn-utts` utterances of a seeded permutation, each cropped to its first `--crop-s` seconds):
   running_mean / running_var := per-channel mean / unbiased variance of the BN *input* over the
   valid frames, i.e. what training would store; gamma = 1, beta = 0 stay as NeMo initialized them.
   Why not one pass of `restore_bn.measure_bn_inputs`: the statistics of BN k depend on how the
   BNs before it normalize. A single pass with NeMo's initial BN state (running mean 0, var 1, so
   every BN is the identity up to 1/sqrt(1 + eps)) measures each layer on un-normalized inputs:
   with NeMo's init (xavier-uniform) the residual sums keep the scale from collapsing, but the
   per-layer variances are off by large factors (the script prints and saves the ratio between
   single-pass and sequential statistics). Repeating passes converges only one layer of depth per
   pass (~55 BN layers along the main path). Instead we go layer by layer inside ONE
   forward pass over one batch holding every BN utterance: a pre-hook on each BatchNorm measures
   its input (valid frames only, float64 sums), writes the running statistics, and only then lets
   the BN run, so every later layer already sees normalized inputs. That is the sequential
   procedure with no approximation. Stability check: a second, independent pass with the library's
   `measure_bn_inputs` (other batching: `--bn-batch` utterances per batch) must reproduce the stored
   statistics (max relative difference printed and saved): the statistics are a fixed point.
3. Quantize W8A8 and W6A8 (weights per channel min/max, activations min/max) with real
   calibration: `--calib-utts` train utterances disjoint from the BN ones (also cropped).
4. `verify`: float-free forward (DtypeRecorder), NumPy bit-exact replay of the shortest utterance,
   batch invariance, on `--verify-utts` test-other utterances cropped to `--verify-crops` seconds
   (the shortest crop gives the NumPy replay: 2 s -> 200 mel frames).
5. Agreement of integer vs float logits on `--eval-utts` test-other utterances (full length, every
   8th utterance in id order, so all four speakers appear): relative L2 error of the dequantized
   logits (int logits * logit_scale vs float logits) on valid frames, frame argmax agreement, and
   the share of identical greedy transcripts. Random weights: the transcripts are gibberish, but
   whether the integer model produces the same gibberish is still a measure.
6. The same for the real QuartzNet-15x5 (restored BN, build/quartznet15x5_restored.nemo), real
   calibration on `--qn-calib-utts` train utterances (full length).

Writes build/results/jasper_check.json (everything, incl. verify reports, int64-accumulator layers,
per-layer accumulator bounds) and build/results/jasper_check.csv (tidy: one row per model x
bits x utterance, plus a pooled row per model x bits). Prints a summary table. The results file
the README quotes, results/jasper_check.csv (`--results`), holds one row per model x bits: the
verify verdicts, the pooled agreement, and the provenance of the row (intasr.provenance: model
file sha256, evaluation-set fingerprint, every setting, code version and commit, machine).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from intasr import paths
from intasr.calibration import calibrate
from intasr.convert import convert
from intasr.data import load_batch, load_dataset
from intasr.models import config_for, load_model
from intasr.models.restore_bn import (conv_before_each_bn, measure_bn_inputs, restore_bn_sequential,
                                        stats_difference)
from intasr.text import ctc_greedy_decode
from intasr.verify import verify

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f} s] {msg}", flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def crop_batch(utts, seconds: float | None):
    """Padded audio batch of `utts`, each cut to its first `seconds` (None: full length)."""
    audio, lengths = load_batch(utts)
    if seconds is not None:
        n = int(seconds * 16000)
        lengths = torch.clamp(lengths, max=n)
        audio = audio[:, : int(lengths.max())].clone()
    return audio, lengths


# --------------------------------------------------------------------------- Jasper from NeMo

def build_nemo_jasper(path: Path, seed: int) -> dict:
    """NeMo's EncDecCTCModel with its own random init, saved as a .nemo (NeMo's save_to)."""
    import logging

    from omegaconf import OmegaConf

    from nemo.collections.asr.models import EncDecCTCModel
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.ERROR)
    seed_everything(seed)
    cfg = config_for("jasperdr10x5")
    model = EncDecCTCModel(cfg=OmegaConf.create(cfg)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(path))
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    return {"params": n_params, "bn_layers": len(bns),
            "bn_init": {"gamma": float(torch.stack([b.weight.detach().mean() for b in bns]).mean()),
                        "beta": float(torch.stack([b.bias.detach().abs().mean() for b in bns]).mean()),
                        "running_var": float(torch.stack([b.running_var.mean() for b in bns]).mean())}}


def var_profile(stats: dict) -> list[dict]:
    """Median per-channel variance of each BN input, in forward order (main path only)."""
    return [{"bn": name, "median_var": float(np.median(v))} for name, (m, v) in stats.items() if ".res." not in name]


# --------------------------------------------------------------------------- measurements

@torch.no_grad()
def mels_of(model, batches):
    return [tuple(t.clone() for t in model.features(a, n)) for a, n in batches]


def layer_table(qmodel) -> list[dict]:
    """Per integer conv of the program: its proven worst-case |acc| vs the int32 limit."""
    values = qmodel.program.values
    rows = []
    for op in qmodel.int_convs():
        x = values[op.inputs[0]]
        bound = int(op.meta["bound"])
        rows.append({"layer": op.name, "shape": "x".join(map(str, op.params["weight"].shape)), "x_bits": x.bits,
                     "x_signed": x.signed, "acc_bound": bound, "bound_over_int32": bound / (2 ** 31 - 1),
                     "acc_dtype": op.attrs["acc_dtype"]})
    return rows


@torch.no_grad()
def agreement(fmodel, qmodel, eval_batches, model_name: str, w_bits: int, a_bits: int, ids) -> list[dict]:
    """Per-utterance and pooled: rel. L2 of dequantized logits, argmax agreement, same transcript."""
    rows = []
    num = den = 0.0
    agree = frames = same = 0
    k = 0
    for (mel, mel_len), float_out in eval_batches:
        ref, ref_len = float_out
        q_logits, q_len = qmodel.forward_int(qmodel.quantize_input(mel), mel_len)
        assert torch.equal(q_len, ref_len)
        deq = q_logits.double() * qmodel.logit_scale
        ref_text = ctc_greedy_decode(ref, ref_len, fmodel.labels, time_axis=2)
        int_text = ctc_greedy_decode(q_logits, q_len, qmodel.labels, time_axis=2)
        for b in range(mel.shape[0]):
            t = int(ref_len[b])
            r, d = ref[b, :, :t].double(), deq[b, :, :t]
            e2, r2 = float(((d - r) ** 2).sum()), float((r ** 2).sum())
            a = int((d.argmax(0) == r.argmax(0)).sum())
            s = ref_text[b] == int_text[b]
            rows.append({"model": model_name, "w_bits": w_bits, "a_bits": a_bits, "utterance": ids[k],
                         "frames": t, "rel_l2": (e2 / r2) ** 0.5, "argmax_agree": a / t,
                         "transcript_identical": float(s), "float_transcript": ref_text[b],
                         "int_transcript": int_text[b]})
            num += e2
            den += r2
            agree += a
            frames += t
            same += int(s)
            k += 1
    rows.append({"model": model_name, "w_bits": w_bits, "a_bits": a_bits, "utterance": "ALL", "frames": frames,
                 "rel_l2": (num / den) ** 0.5, "argmax_agree": agree / frames, "transcript_identical": same / k,
                 "float_transcript": "", "int_transcript": ""})
    return rows


@torch.no_grad()
def front_end_diagnosis(qmodel, audio, lengths) -> list[dict]:
    """Where a batch-invariance failure comes from, per utterance: the integer forward on the same
    integer input (must be identical), and the float front end (features of the utterance alone vs
    inside the padded batch: how many quantized input codes differ, and how many output frames
    then change their argmax)."""
    mel, mel_len = qmodel.features(audio, lengths)
    q = qmodel.quantize_input(mel)
    logits, out_len = qmodel.forward_int(q, mel_len)
    rows = []
    for b in range(audio.shape[0]):
        n, t = int(mel_len[b]), int(out_len[b])
        same_int = torch.equal(qmodel.forward_int(q[b:b + 1, :, :n], mel_len[b:b + 1])[0][0, :, :t], logits[b, :, :t])
        a_mel, a_len = qmodel.features(audio[b:b + 1, : lengths[b]], lengths[b:b + 1])
        a_q = qmodel.quantize_input(a_mel)
        a_logits, _ = qmodel.forward_int(a_q, a_len)
        rows.append({"integer_logits_identical": bool(same_int), "mel_frames": n,
                     "input_codes_differing": int((a_q[0, :, :n] != q[b, :, :n]).sum()),
                     "max_abs_mel_diff": float((a_mel[0, :, :n] - mel[b, :, :n]).abs().max()),
                     "output_frames_argmax_differing": int((a_logits[0, :, :t].argmax(0) != logits[b, :, :t].argmax(0)).sum()),
                     "output_frames": t})
    return rows


def check_model(name, model, bn_info, calib_batches, verify_batch, eval_batches, eval_ids, bits, numpy_items,
                results, rows):
    log(f"{name}: calibrating on {len(calib_batches)} batch(es)")
    t = time.time()
    observers = calibrate(model, calib_batches)
    results[name]["calibration_s"] = round(time.time() - t, 1)
    log(f"{name}: float logits of {len(eval_ids)} test-other utterances")
    t = time.time()
    with torch.no_grad():
        float_outs = [model.forward_features(m, n) for m, n in eval_batches]
    results[name]["float_eval_s"] = round(time.time() - t, 1)
    evals = list(zip(eval_batches, float_outs))
    for w, a in bits:
        tag = f"W{w}A{a}"
        t = time.time()
        qmodel = convert(model, observers, w, a)
        entry = {"convert_s": round(time.time() - t, 1), "logit_scale": qmodel.logit_scale,
                 "input_scale": qmodel.input_scale, "int64_layers": qmodel.int64_layers()}
        log(f"{name} {tag}: converted; int64 accumulators in {len(entry['int64_layers'])} layer(s) "
            f"{entry['int64_layers']}")
        table = layer_table(qmodel)
        worst = max(table, key=lambda r: r["acc_bound"])
        entry["accumulators"] = {"layers": len(table), "worst_layer": worst["layer"], "worst_bound": worst["acc_bound"],
                                 "worst_over_int32": worst["bound_over_int32"], "table": table}
        log(f"{name} {tag}: verify (float-free, every backend on the padded batch (NumPy: {numpy_items} "
            f"utterance(s)), batch invariance)")
        t = time.time()
        rep = verify(qmodel, *verify_batch, numpy_items=numpy_items)
        entry["verify_s"] = round(time.time() - t, 1)
        entry["verify"] = rep
        log(f"{name} {tag}: verify passed={rep['passed']} float_free={rep['float_free']['passed']} "
            f"({rep['float_free']['ops_recorded']} ops) bit_exact={rep['bit_exact']['passed']} "
            f"{ {k: v.get('bit_exact') for k, v in rep['backends'].items()} } "
            f"batch_invariance={rep['batch_invariance']['passed']} [{entry['verify_s']} s]")
        if not rep["batch_invariance"]["passed"]:
            entry["batch_invariance_diagnosis"] = front_end_diagnosis(qmodel, *verify_batch)
            log(f"{name} {tag}: batch invariance diagnosis: {entry['batch_invariance_diagnosis']}")
        t = time.time()
        r = agreement(model, qmodel, evals, name, w, a, eval_ids)
        entry["int_eval_s"] = round(time.time() - t, 1)
        entry["agreement"] = {k: r[-1][k] for k in ("frames", "rel_l2", "argmax_agree", "transcript_identical")}
        rows += r
        log(f"{name} {tag}: rel_l2={r[-1]['rel_l2']:.4f} argmax_agree={100 * r[-1]['argmax_agree']:.2f}% "
            f"transcripts identical={100 * r[-1]['transcript_identical']:.0f}% [{entry['int_eval_s']} s]")
        results[name][tag] = entry
        del qmodel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", default=str(paths.librispeech("train-clean-100")))
    ap.add_argument("--test", default=str(paths.librispeech("test-other")))
    ap.add_argument("--jasper-nemo", default=str(paths.build_dir() / "jasperdr10x5_random.nemo"))
    ap.add_argument("--rebuild", action="store_true", help="rebuild the NeMo Jasper even if the .nemo exists")
    ap.add_argument("--quartznet", default=str(paths.restored_model()))
    ap.add_argument("--skip-quartznet", action="store_true")
    ap.add_argument("--bn-utts", type=int, default=16)
    ap.add_argument("--bn-batch", type=int, default=4, help="batch size of the measure_bn_inputs check pass")
    ap.add_argument("--calib-utts", type=int, default=16, help="Jasper calibration utterances (disjoint from BN)")
    ap.add_argument("--qn-calib-utts", type=int, default=32, help="QuartzNet calibration utterances")
    ap.add_argument("--crop-s", type=float, default=6.0, help="Jasper BN/calibration audio: first seconds")
    ap.add_argument("--eval-utts", type=int, default=5)
    ap.add_argument("--verify-crops", default="2,3,4", help="seconds of each verify utterance; shortest -> NumPy")
    ap.add_argument("--out", default=str(paths.build_dir() / "results" / "jasper_check.json"))
    ap.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "results" / "jasper_check.csv"),
                    help="one row per model x bits with provenance (what the README quotes)")
    args = ap.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    seed_everything(args.seed)
    out_json = Path(args.out)
    out_csv = out_json.with_suffix(".csv")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    bits = [(8, 8), (6, 8)]
    results: dict = {"seed": args.seed, "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "args": vars(args)}
    rows: list[dict] = []

    # ---- data split (seeded): BN utterances, Jasper calibration, QuartzNet calibration; test subsets
    train = load_dataset(args.train, require_text=False)
    perm = np.random.default_rng(args.seed).permutation(len(train)).tolist()
    bn_utts = [train[i] for i in perm[: args.bn_utts]]
    calib_utts = [train[i] for i in perm[args.bn_utts: args.bn_utts + args.calib_utts]]
    qn_calib = [train[i] for i in perm[args.bn_utts: args.bn_utts + args.qn_calib_utts]]
    test = load_dataset(args.test)
    eval_utts = test[::8][: args.eval_utts]
    crops = [float(s) for s in args.verify_crops.split(",")]
    verify_utts = test[1: 1 + len(crops)]
    audio_v, len_v = load_batch(verify_utts)
    len_v = torch.minimum(len_v, torch.tensor([int(c * 16000) for c in crops]))
    verify_batch = (audio_v[:, : int(len_v.max())].clone(), len_v)
    results["data"] = {"bn_utterances": [u.id for u in bn_utts], "calibration_utterances": [u.id for u in calib_utts],
                       "quartznet_calibration_utterances": [u.id for u in qn_calib],
                       "eval_utterances": [u.id for u in eval_utts],
                       "eval_seconds": round(sum(u.duration for u in eval_utts), 2),
                       "verify_utterances": [u.id for u in verify_utts], "verify_crop_s": crops}
    log(f"seed {args.seed}, {torch.get_num_threads()} threads; BN {len(bn_utts)} / calib {len(calib_utts)} train "
        f"utterances (first {args.crop_s} s), eval {len(eval_utts)} test-other utterances "
        f"({results['data']['eval_seconds']} s), verify crops {crops} s")

    def eval_batches_for(model):
        # one utterance per batch: the float reference of a long utterance stays cheap in memory
        return mels_of(model, [load_batch([u]) for u in eval_utts])

    # ---- JasperDR-10x5
    jpath = Path(args.jasper_nemo)
    t = time.time()
    if args.rebuild or not jpath.is_file():
        log(f"building JasperDR-10x5 with NeMo (EncDecCTCModel, NeMo's random init) -> {jpath}")
        results["jasper_build"] = build_nemo_jasper(jpath, args.seed)
    else:
        log(f"reusing {jpath} (pass --rebuild to make it again)")
        results["jasper_build"] = {"reused": True}
    results["jasper_build"]["build_s"] = round(time.time() - t, 1)
    seed_everything(args.seed)
    jasper = load_model(jpath)
    n_params = sum(p.numel() for p in jasper.parameters())
    log(f"loaded with intasr.models.load_model: {n_params / 1e6:.1f} M parameters, "
        f"{len(conv_before_each_bn(jasper))} BatchNorm layers")

    results["jasper"] = {"params": n_params}
    bn_audio, bn_len = crop_batch(bn_utts, args.crop_s)
    bn_batches = [(bn_audio[i: i + args.bn_batch], bn_len[i: i + args.bn_batch])
                  for i in range(0, len(bn_utts), args.bn_batch)]
    t = time.time()
    naive = measure_bn_inputs(jasper, bn_batches, progress=False)
    prof = var_profile(naive)
    results["jasper"]["single_pass_bn_var"] = {"first": prof[0], "middle": prof[len(prof) // 2], "last": prof[-1],
                                               "seconds": round(time.time() - t, 1)}
    log(f"single measure_bn_inputs pass with NeMo's initial BN state (mean 0, var 1): median BN-input variance "
        f"{prof[0]['median_var']:.3g} ({prof[0]['bn']}) -> {prof[len(prof) // 2]['median_var']:.3g} "
        f"({prof[len(prof) // 2]['bn']}) -> {prof[-1]['median_var']:.3g} ({prof[-1]['bn']})")

    t = time.time()
    seq = restore_bn_sequential(jasper, bn_audio, bn_len)
    results["jasper"]["bn_restore_s"] = round(time.time() - t, 1)
    prof = var_profile(seq)
    log(f"sequential restoration (one batch of {len(bn_utts)}, layer by layer) in {results['jasper']['bn_restore_s']} s:"
        f" median BN-input variance {prof[0]['median_var']:.3g} -> {prof[len(prof) // 2]['median_var']:.3g} -> "
        f"{prof[-1]['median_var']:.3g}")
    t = time.time()
    check = measure_bn_inputs(jasper, bn_batches, progress=False)
    diff = stats_difference(jasper, check)
    zero_var = sum(int((v <= 0).sum()) for _m, v in seq.values())
    # how wrong the single pass was: per layer, median over channels of var_single / var_sequential
    ratios = np.array([np.median(naive[k][1] / np.maximum(seq[k][1], 1e-30)) for k in seq])
    results["jasper"]["single_pass_vs_sequential"] = {
        "median_var_ratio_min": float(ratios.min()), "median_var_ratio_max": float(ratios.max()),
        "layers_off_by_more_than_2x": int(((ratios > 2) | (ratios < 0.5)).sum()), "layers": len(ratios)}
    log(f"single pass vs sequential: per-layer median variance ratio {ratios.min():.3g} .. {ratios.max():.3g}; "
        f"{int(((ratios > 2) | (ratios < 0.5)).sum())} of {len(ratios)} BN layers off by more than 2x")
    results["jasper"]["bn_restore"] = {"method": "sequential pre-hook, one batch, valid frames, unbiased var",
                                       "layers": len(seq), "zero_variance_channels": zero_var,
                                       "check_pass_s": round(time.time() - t, 1), "fixed_point": diff,
                                       "median_var_first_mid_last": [prof[0], prof[len(prof) // 2], prof[-1]]}
    log(f"check pass (measure_bn_inputs, batches of {args.bn_batch}): max |mean diff| = "
        f"{diff['max_abs_mean_diff_in_std']:.2e} std, max rel var diff = {diff['max_rel_var_diff']:.2e}; "
        f"{zero_var} zero-variance channels")
    restored_path = jpath.with_name(jpath.stem + "_bnrestored.nemo")
    from intasr.models import save_model

    save_model(jasper, restored_path)
    results["jasper"]["restored_path"] = paths.display_path(restored_path)
    model_files = {"JasperDR-10x5": restored_path, "QuartzNet-15x5": Path(args.quartznet)}

    calib = mels_of(jasper, [crop_batch(calib_utts[i: i + 4], args.crop_s) for i in range(0, len(calib_utts), 4)])
    evals = eval_batches_for(jasper)
    results["JasperDR-10x5"] = {}
    check_model("JasperDR-10x5", jasper, None, calib, verify_batch, evals, [u.id for u in eval_utts], bits, 1,
                results, rows)
    del jasper, calib, evals
    _write(out_json, out_csv, results, rows)

    # ---- QuartzNet-15x5 (real weights)
    if not args.skip_quartznet:
        qn = load_model(args.quartznet)
        log(f"QuartzNet-15x5 {args.quartznet}: {sum(p.numel() for p in qn.parameters()) / 1e6:.1f} M parameters")
        qn_cal = mels_of(qn, [load_batch(qn_calib[i: i + 8]) for i in range(0, len(qn_calib), 8)])
        results["QuartzNet-15x5"] = {}
        check_model("QuartzNet-15x5", qn, None, qn_cal, verify_batch, eval_batches_for(qn),
                    [u.id for u in eval_utts], bits, 1, results, rows)
    results["runtime_s"] = round(time.time() - T0, 1)
    _write(out_json, out_csv, results, rows)
    _summary(results, rows)
    _write_results(Path(args.results), results, model_files, eval_utts, args)
    log(f"wrote {out_json}, {out_csv} and {args.results}; total {results['runtime_s']} s")
    return 0 if all(v.get("verify", {}).get("passed", True) for m in ("JasperDR-10x5", "QuartzNet-15x5")
                    for v in results.get(m, {}).values() if isinstance(v, dict)) else 1


def _write(out_json, out_csv, results, rows):
    import pandas as pd

    out_json.write_text(json.dumps(results, indent=1, default=str))
    if rows:
        pd.DataFrame(rows).to_csv(out_csv, index=False)


# arguments that name files or folders: a row names them as paths.display_path does (relative to
# the repository, build/ or ../shared/), never the machine's absolute paths
PATH_ARGS = ("train", "test", "jasper_nemo", "quartznet")


def row_settings(args) -> dict:
    """The command's settings as results columns (setting_<name>), paths made portable."""
    return {f"setting_{k}": paths.display_path(v) if k in PATH_ARGS and v else v
            for k, v in vars(args).items() if k not in ("out", "results")}


def _write_results(path: Path, results, model_files, eval_utts, args) -> None:
    """results/jasper_check.csv: per model x bits, the verdicts and pooled agreement, with the
    row's provenance (the restored model file it ran on, the agreement utterances, all settings)."""
    import pandas as pd

    from intasr.models.checkpoint import atomic_write_bytes
    from intasr.provenance import provenance

    settings = row_settings(args)
    out = []
    for model, entries in results.items():
        if model not in model_files or not isinstance(entries, dict):
            continue
        for tag, e in entries.items():
            if not isinstance(e, dict) or "verify" not in e:
                continue
            v, a = e["verify"], e["agreement"]
            w, act = tag[1:].split("A")
            out.append({"model": model, "w_bits": int(w), "a_bits": int(act),
                        "verify_passed": v["passed"], "float_free": v["float_free"]["passed"],
                        "float_free_ops": v["float_free"]["ops_recorded"], "backends_bit_exact": v["bit_exact"]["passed"],
                        "backends": " ".join(f"{k}={'skipped' if r.get('skipped') else r['bit_exact']}"
                                             for k, r in v["backends"].items()),
                        "batch_invariant": v["batch_invariance"]["passed"], "int64_layers": len(e["int64_layers"]),
                        "eval_frames": a["frames"], "rel_l2": a["rel_l2"], "argmax_agree": a["argmax_agree"],
                        "transcript_identical": a["transcript_identical"],
                        **provenance(model_files[model], eval_utts, settings)})
    text = pd.DataFrame(out).to_csv(index=False)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _summary(results, rows):
    print("\nSummary (pooled over the eval utterances; rel_l2 = ||S*q - f|| / ||f|| on valid frames)")
    print(f"{'model':16s} {'bits':6s} {'verify':7s} {'float-free ops':>14s} {'exact':>6s} {'batch':>6s} "
          f"{'rel_l2':>8s} {'argmax%':>8s} {'same text%':>10s} {'int64 layers':>12s}")
    for model in ("JasperDR-10x5", "QuartzNet-15x5"):
        for tag, e in results.get(model, {}).items():
            if not isinstance(e, dict) or "verify" not in e:
                continue
            v, a = e["verify"], e["agreement"]
            print(f"{model:16s} {tag:6s} {str(v['passed']):7s} {v['float_free']['ops_recorded']:>14d} "
                  f"{str(v['bit_exact']['passed']):>6s} {str(v['batch_invariance']['passed']):>6s} "
                  f"{a['rel_l2']:8.4f} {100 * a['argmax_agree']:8.2f} {100 * a['transcript_identical']:10.0f} "
                  f"{len(e['int64_layers']):>12d}")


if __name__ == "__main__":
    sys.exit(main())
