"""Issue 13's done-when check on the real QuartzNet-15x5, through the `intasr` command line.

1. The first N test-other utterances resampled to 44.1 kHz (16-bit wav) in a folder: `intasr
   transcribe --model M DIR --json` must give, file by file, the transcripts `intasr evaluate`
   decodes from the same files (a manifest of them), for the float .nemo and the integer .aqz.
2. A long file: the test-other utterances joined with 0.5 s of silence, round after round, up to
   10 minutes (the 251 train-clean-100 utterances have no transcripts here), transcribed in 40 s
   windows; its WER against the joined references next to the WER `evaluate` gives on the same
   utterances one by one (what chunking costs).

    .venv/bin/python tools/transcribe_check.py --model build/quartznet15x5_restored.nemo \
        --quantized build/q/w8a8_random.aqz --out results/transcribe_check

writes OUT/folder.json and OUT/long.json (the commands run and the results); audio goes to --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from intasr import paths
from intasr.data import read_librispeech
from intasr.text import wer_summary

CLI = [sys.executable, "-m", "intasr.cli"]


def run(argv: list[str], log: list) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(CLI + [str(a) for a in argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    shown = (paths.display_path(a) if isinstance(a, Path) or os.path.isabs(str(a)) else str(a) for a in argv)
    log.append({"command": "intasr " + shlex.join(shown), "exit": proc.returncode,
                "stderr": proc.stderr.strip()[-2000:], "seconds": round(seconds, 1)})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {log[-1]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(paths.restored_model()))
    ap.add_argument("--quantized", required=True)
    ap.add_argument("--utterances", type=int, default=5)
    ap.add_argument("--long-seconds", type=float, default=600.0)
    ap.add_argument("--work", default=str(paths.build_dir() / "transcribe_check"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", nargs="+", choices=["folder", "long"], default=["folder", "long"])
    ap.add_argument("--long-kinds", nargs="+", choices=["nemo", "aqz"], default=["nemo"],
                    help="models for the long file (the .aqz runs the integer reference: slow on 2 cores)")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    (work / "audio44k").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    test_other = read_librispeech(paths.librispeech("test-other"))
    if "folder" in args.parts:
        _write(out / "folder.json", folder_check(args, work, test_other))
    if "long" in args.parts:
        _write(out / "long.json", long_check(args, work, test_other))


def _write(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "commands"}, indent=2))
    print(f"-> {path}")


def folder_check(args, work: Path, test_other) -> dict:
    """44.1 kHz folder: transcribe == evaluate, for both model kinds."""
    log: list = []
    report = {"commands": log}
    manifest = work / "audio44k.jsonl"
    rows = []
    for u in test_other[:args.utterances]:
        x, rate = sf.read(u.audio_path, dtype="float32")
        dest = work / "audio44k" / f"{u.id}.wav"
        sf.write(dest, resample_poly(x, 441, 160), 44100, subtype="PCM_16")
        rows.append(json.dumps({"audio_filepath": str(dest.resolve()), "text": u.text, "id": u.id}))
    manifest.write_text("\n".join(rows) + "\n")
    for kind, model in (("nemo", args.model), ("aqz", args.quantized)):
        tj, ej = work / f"transcribe_{kind}.json", work / f"evaluate_{kind}.json"
        run(["transcribe", "--model", model, work / "audio44k", "--json", tj], log)
        run(["evaluate", "--model", model, "--data", manifest, "--transcripts", "--json", ej, "--quiet"], log)
        by_id = {Path(r["file"]).stem: r["text"] for r in json.loads(tj.read_text())}
        ev = {t["id"]: t["hyp"] for t in json.loads(ej.read_text())["transcripts"]}
        report[kind] = {"files": len(by_id), "equal": sum(by_id[k] == ev[k] for k in ev),
                        "differ": sorted(k for k in ev if by_id[k] != ev[k]),
                        "words_with_times": sum(len(r["words"]) for r in json.loads(tj.read_text())),
                        "evaluate_wer": json.loads(ej.read_text())["wer"]}
    return report


def long_check(args, work: Path, test_other) -> dict:
    """A long file: chunked transcript vs the same utterances one by one."""
    log: list = []
    report = {"commands": log}
    pieces, used, total = [], [], 0.0
    gap = np.zeros(8000, np.float32)
    while total < args.long_seconds:  # whole utterances, round after round, so the references are exact
        for u in test_other:
            if total >= args.long_seconds:
                break
            x, _ = sf.read(u.audio_path, dtype="float32")
            pieces += [x, gap]
            used.append(u)
            total += (len(x) + len(gap)) / 16000
    long = work / "long.wav"
    sf.write(long, np.concatenate(pieces), 16000, subtype="PCM_16")
    lm = work / "long_parts.jsonl"
    lm.write_text("".join(json.dumps({"audio_filepath": str(Path(u.audio_path).resolve()), "text": u.text,
                                      "id": u.id}) + "\n" for u in used))
    report.update({"seconds": round(total, 2), "utterances": len(used)})
    for kind, model in (("nemo", args.model), ("aqz", args.quantized)):
        if kind not in args.long_kinds:
            continue
        lj, pj = work / f"long_{kind}.json", work / f"long_parts_{kind}.json"
        secs = run(["transcribe", "--model", model, long, "--json", lj], log)
        run(["evaluate", "--model", model, "--data", lm, "--json", pj, "--quiet"], log)
        hyp = json.loads(lj.read_text())[0]["text"]
        chunked = wer_summary([" ".join(u.text for u in used)], [hyp], n_boot=1)
        one_by_one = json.loads(pj.read_text())
        report[kind] = {"chunked_wer": round(chunked["wer"], 2), "chunked_word_errors": chunked["word_errors"],
                        "words": chunked["words"], "one_by_one_wer": round(one_by_one["wer"], 2),
                        "one_by_one_word_errors": one_by_one["word_errors"], "transcribe_seconds": round(secs, 1)}
    return report


if __name__ == "__main__":
    main()
