#!/usr/bin/env python
"""`intasr verify` on the models issue 9 names, one JSON report each (results/verify/).

    .venv/bin/python tools/verify_models.py --out results/verify [--iterations 200] [--skip-jasper]

* QuartzNet-15x5 (the restored real model, `make model`), W8A8 and W6A8, zero-shot synthetic
  calibration (1 batch of 8 x 500 frames, seed 0, --iterations Adam steps; the batch is cached
  under build/synth_cache and shared by both widths);
* JasperDR-10x5 (PyTorch's default random init, seed 0; BatchNorm statistics restored layer by
  layer from 8 train-clean-100 utterances cropped to 4 s: models.restore_bn.restore_bn_sequential),
  W8A8, real calibration on the longer 8 of the first 16 train-clean-100 utterances (the second
  length-sorted batch of `calibration.real_mels`; they may overlap the BatchNorm ones).
* the hama Conformer-CTC (build/conformer_hama.nemo: `intasr import-hama --restore-bn`), W8A8,
  zero-shot synthetic calibration (the `intasr quantize` defaults, seed 0);
* a NeMo-architecture Conformer-CTC small (striding Conv2d subsampling, rel_pos attention; random
  weights, seed 0; BatchNorm statistics from one training-mode pass over 8 train-clean-100
  utterances cropped to 4 s), W8A8, real calibration on 8 others.
Each report: float-free forward, every backend against the torch reference on a padded batch of 3
test-other utterances (cropped to --seconds), batch/padding invariance (verify.verify), and its
provenance (intasr.provenance: the model file's sha256 where the model is a file, else its float
state dict's sha256; the verified utterances' fingerprint, the settings with file paths relative
to the repository, code version and commit, machine).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from intasr import paths
from intasr.calibration import calibration_batches, real_mels
from intasr.data import load_batch, load_dataset
from intasr.models import ConvASR, config_for, load_model
from intasr.models.restore_bn import restore_bn_sequential
from intasr.quantize import quantize
from intasr.verify import verify


def _report(name, qmodel, batch, seconds, out: Path, extra: dict, model_path=None, utts=None,
            float_model=None) -> bool:
    """Verify qmodel on batch and write out/<name>.json with its provenance. A model built here
    (no file: model_path None) is identified by the sha256 of its float state dict instead."""
    from intasr.models.checkpoint import atomic_write_bytes
    from intasr.provenance import provenance
    from intasr.synth import model_hash

    t = time.time()
    rep = verify(qmodel, *batch, max_seconds=seconds)
    rep.update(extra, model=name, verify_seconds=round(time.time() - t, 1))
    settings = {"report": name, "crop_seconds": seconds, **extra,
                "model_file": paths.display_path(model_path) if model_path else "none (built here)"}
    if model_path is None and float_model is not None:
        settings["model_state_sha256"] = model_hash(float_model)
    rep["provenance"] = provenance(model_path, utts, settings)
    text = json.dumps(rep, indent=1, default=str)
    atomic_write_bytes(out / f"{name}.json", lambda f: f.write(text.encode()))
    exact = {k: v.get("bit_exact") if not v.get("skipped") else "skipped: " + v["skipped"]
             for k, v in rep["backends"].items()}
    print(f"{name}: passed={rep['passed']} float_free={rep['float_free']['passed']} backends={exact} "
          f"invariant={rep['batch_invariance']['passed']} ({rep['verify_seconds']} s)", flush=True)
    return bool(rep["passed"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/verify")
    p.add_argument("--model", default=str(paths.restored_model()))
    p.add_argument("--test", default=str(paths.librispeech("test-other")))
    p.add_argument("--train", default=str(paths.librispeech("train-clean-100")))
    p.add_argument("--iterations", type=int, default=200, help="synthetic Adam iterations (QuartzNet)")
    p.add_argument("--seconds", type=float, default=6.0, help="crop of the verified utterances")
    p.add_argument("--skip-jasper", action="store_true")
    p.add_argument("--skip-quartznet", action="store_true")
    p.add_argument("--skip-conformers", action="store_true")
    p.add_argument("--hama", default="build/conformer_hama.nemo")
    args = p.parse_args(argv)
    out = Path(args.out)
    utts = load_dataset(args.test, require_text=False, limit=3)
    batch = load_batch(utts)
    ok = True
    if not args.skip_quartznet:
        model = load_model(args.model)
        synth = calibration_batches(model, "synthetic", seed=0, n_batches=1, batch_size=8, frames=500,
                                    synth={"iterations": args.iterations}, model_path=args.model)
        for w in (8, 6):
            q = quantize(model, synth, w, 8, info={"calibration": "synthetic", "seed": 0})
            ok &= _report(f"quartznet15x5_w{w}a8_synthetic", q, batch, args.seconds, out,
                          {"calibration": f"synthetic (1 x 8 x 500, {args.iterations} iterations, seed 0)"},
                          args.model, utts)
    if not args.skip_jasper:
        torch.manual_seed(0)
        jasper = ConvASR(config_for("jasperdr10x5")).eval()
        train = load_dataset(args.train, require_text=False)
        audio, lengths = load_batch(train[:8])
        lengths = torch.clamp(lengths, max=64000)
        restore_bn_sequential(jasper, audio[:, :64000], lengths)
        calib = real_mels(jasper, args.train, limit=16)[1:]  # batches after the first 8 utterances
        q = quantize(jasper, calib, 8, 8, info={"calibration": "real", "seed": 0})
        ok &= _report("jasperdr10x5_w8a8_real", q, batch, args.seconds, out,
                      {"calibration": "real (the longer 8 of 16 train-clean-100 utterances), random weights, "
                                     "BN statistics from the first 8 (4 s crops)"}, None, utts, jasper)
    if not args.skip_conformers:
        hama = load_model(args.hama)
        synth = calibration_batches(hama, "synthetic", seed=0, n_batches=1, batch_size=8, frames=500,
                                    model_path=args.hama)
        q = quantize(hama, synth, 8, 8, info={"calibration": "synthetic", "seed": 0})
        ok &= _report("conformer_hama_w8a8_synthetic", q, batch, args.seconds, out,
                      {"calibration": "synthetic (1 x 8 x 500, 200 iterations, seed 0)"}, args.hama, utts)
        from intasr.models.conformer import ConformerCTC
        from intasr.models.configs import conformer_ctc_config

        torch.manual_seed(0)
        nemo = ConformerCTC(conformer_ctc_config("small"))
        train = load_dataset(args.train, require_text=False)
        audio, lengths = load_batch(train[:8])
        lengths = torch.clamp(lengths, max=64000)
        with torch.no_grad():
            mel, mel_len = nemo.features(audio[:, :64000], lengths)
            for m in nemo.encoder.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.reset_running_stats()
                    m.momentum = None
            nemo.encoder.train()
            nemo.encoder(mel, mel_len)
            nemo.eval()
        calib = real_mels(nemo, args.train, limit=16)[1:]
        q = quantize(nemo, calib, 8, 8, info={"calibration": "real", "seed": 0})
        ok &= _report("conformer_ctc_small_nemo_w8a8_real", q, batch, args.seconds, out,
                      {"calibration": "real (the longer 8 of 16 train-clean-100 utterances), random weights, "
                                      "BN statistics from one training-mode pass over the first 8 (4 s crops)"},
                      None, utts, nemo)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
