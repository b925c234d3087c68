"""Proofs that an integer model is what it claims to be.

1. Float-free: a TorchDispatchMode records the output dtype of every op that runs inside
   `forward_int` (the torch reference backend of the program); no floating-point tensor may
   appear between the quantized input and the logits.
2. Bit-exact across backends: every other backend of the program (the NumPy reference, which
   shares no code with torch; the integer ONNX graph on onnxruntime; the fast CPU runner; the C
   runtime, in the kernel family it picks for this CPU, or $ASRQ_ISA's) is run
   on the same padded batch with its lengths, and every valid logit must equal the reference's.
   A backend that cannot run exactly on this machine (onnxruntime's integer kernels without
   VNNI, no C compiler) is reported as skipped with its reason, never as a pass.
3. Batch/padding invariance: an utterance alone and inside a padded batch gives identical integer
   logits on its valid frames (so identical transcripts).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .program.backends import BACKENDS as REGISTRY
from .program.backends import BackendUnavailable
from .program.backends import run as run_program_backend

# compared with the torch reference: every exact backend but the reference itself, and the simulated ones
BACKENDS = tuple(n for n, spec in REGISTRY.items() if spec.exact and n != "torch")
SIMULATED = tuple(n for n, spec in REGISTRY.items() if not spec.exact)


class DtypeRecorder(TorchDispatchMode):
    """Records (op, output dtype) for every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.records.append((str(func), t.dtype))
        return out

    def float_ops(self) -> list[tuple[str, torch.dtype]]:
        return [(op, dt) for op, dt in self.records if dt.is_floating_point or dt.is_complex]


def float_ops_in_forward(qmodel, q: torch.Tensor, lengths: torch.Tensor):
    """Run `forward_int` under the recorder; return (float ops seen, number of ops recorded)."""
    with DtypeRecorder() as rec:
        qmodel.forward_int(q, lengths)
    return rec.float_ops(), len(rec.records)


def numpy_forward(qmodel, q: np.ndarray, lengths: np.ndarray):
    """Independent NumPy replay of the model's program: (int64 logits, int64 lengths)."""
    return run_program_backend("numpy", qmodel.program, q, lengths)[:2]


def run_backend(name: str, qmodel, q: torch.Tensor, lengths: torch.Tensor, threads: int = 1):
    """(int64 logits, lengths, what to record of the run) of one backend (``program.backends``);
    raises ``BackendUnavailable`` with the reason."""
    return run_program_backend(name, qmodel.program, q, lengths, threads)


def _compare(ref_logits, ref_len, logits, out_len) -> dict:
    ref_logits, logits = np.asarray(ref_logits).astype(np.int64), np.asarray(logits).astype(np.int64)
    ref_len, out_len = np.asarray(ref_len).reshape(-1), np.asarray(out_len).reshape(-1)
    if not np.array_equal(ref_len, out_len):
        return {"bit_exact": False, "lengths_equal": False, "logits": 0, "differ": -1, "max_abs_diff": -1}
    n = differ = max_diff = 0
    for b, t in enumerate(ref_len.tolist()):
        a, c = ref_logits[b, :, :t], logits[b, :, :t]
        if a.shape != c.shape:
            return {"bit_exact": False, "lengths_equal": True, "logits": int(a.size), "differ": int(a.size),
                    "max_abs_diff": -1, "shape_mismatch": [list(a.shape), list(c.shape)]}
        n += a.size
        differ += int((a != c).sum())
        max_diff = max(max_diff, int(np.abs(a - c).max()) if a.size else 0)
    return {"bit_exact": differ == 0, "lengths_equal": True, "logits": int(n), "differ": differ,
            "max_abs_diff": max_diff}


def _crop(audio: torch.Tensor, lengths: torch.Tensor, max_samples: int | None):
    if not max_samples:
        return audio, lengths
    lengths = torch.clamp(lengths, max=max_samples)
    return audio[:, : int(lengths.max())], lengths


def verify(qmodel, audio: torch.Tensor, lengths: torch.Tensor, numpy_items: int | None = None,
           max_seconds: float | None = None, backends=None, threads: int = 1, sample_rate: int = 16000) -> dict:
    """Run the three checks on a padded batch of audio; returns a report with `passed`.

    backends: names from BACKENDS (and SIMULATED: the Q/DQ graph, compared by frame argmax only,
    never counted as exact); default all. numpy_items: replay only the first N utterances of
    the batch in NumPy (its int64 loops are slow; default all). max_seconds: crop every
    utterance to at most this long first (the lengths still differ, so the batch stays padded)."""
    backends = list(backends or BACKENDS + SIMULATED)
    audio, lengths = _crop(audio, lengths, int(max_seconds * sample_rate) if max_seconds else None)
    report: dict = {"program_ops": len(qmodel.program.ops)}
    with torch.inference_mode():
        mel, mel_len = qmodel.features(audio, lengths)
        q = qmodel.quantize_input(mel)
    report["input_dtype"] = str(q.dtype)
    report["padded_batch"] = {"utterances": int(q.shape[0]), "frames": [int(n) for n in mel_len]}

    floats, n_ops = float_ops_in_forward(qmodel, q, mel_len)
    report["float_free"] = {"passed": not floats, "ops_recorded": n_ops,
                            "float_ops": sorted({f"{op} -> {dt}" for op, dt in floats})[:10]}

    with torch.inference_mode():
        logits, out_len = qmodel.forward_int(q, mel_len)
    report["logits_dtype"] = str(logits.dtype)

    report["backends"], report["simulated"] = {}, {}
    for name in backends:
        if name in SIMULATED:
            report["simulated"][name] = _simulated(qmodel, mel, mel_len, logits, out_len)
            continue
        qb, lb, ref, ref_len = q, mel_len, logits, out_len
        if name == "numpy" and numpy_items:
            k = int(numpy_items)
            qb, lb = q[:k, :, : int(mel_len[:k].max())], mel_len[:k]
            ref, ref_len = logits[:k], out_len[:k]
        try:
            with torch.inference_mode():
                got, got_len, info = run_backend(name, qmodel, qb, lb, threads)
        except BackendUnavailable as e:
            report["backends"][name] = {"bit_exact": None, "skipped": str(e)}
            continue
        report["backends"][name] = _compare(ref.numpy(), ref_len.numpy(), got, got_len)
        report["backends"][name].update(utterances=int(qb.shape[0]), **info)
    ran = [r for r in report["backends"].values() if not r.get("skipped")]
    report["bit_exact"] = {"passed": bool(ran) and all(r["bit_exact"] for r in ran),
                           "backends_run": len(ran), "backends_skipped": len(report["backends"]) - len(ran)}

    # integer level: the same integer input alone vs in the padded batch -> identical integers
    invariant, same_text = True, True
    from .text import ctc_greedy_decode

    batch_text = ctc_greedy_decode(logits, out_len, qmodel.labels, time_axis=2)
    with torch.inference_mode():
        for b in range(audio.shape[0]):
            n = int(mel_len[b])
            alone, alone_out = qmodel.forward_int(q[b:b + 1, :, :n], mel_len[b:b + 1])
            t = int(out_len[b])
            invariant &= int(alone_out[0]) == t and torch.equal(alone[0, :, :t], logits[b, :, :t])
            # end to end from audio (the float front end may round differently by batch shape)
            alone_mel, alone_len = qmodel.features(audio[b:b + 1, : lengths[b]], lengths[b:b + 1])
            a_logits, a_len = qmodel.forward_int(qmodel.quantize_input(alone_mel), alone_len)
            same_text &= ctc_greedy_decode(a_logits, a_len, qmodel.labels, time_axis=2)[0] == batch_text[b]
    report["batch_invariance"] = {"passed": bool(invariant and same_text), "utterances": int(audio.shape[0]),
                                  "integer_logits_identical": bool(invariant), "transcripts_identical": bool(same_text)}
    report["int64_accumulator_layers"] = qmodel.int64_layers()
    report["passed"] = all(report[k]["passed"] for k in ("float_free", "bit_exact", "batch_invariance"))
    return report


def _simulated(qmodel, mel, mel_len, logits, out_len) -> dict:
    """The Q/DQ graph (float, simulated quantization) against the integer logits, in real units."""
    try:
        y, y_len, _ = run_program_backend("onnx-qdq", qmodel.program, mel, mel_len)
    except BackendUnavailable as e:
        return {"skipped": str(e)}
    ref = logits.numpy().astype(np.float64) * qmodel.logit_scale
    agree = total = 0
    max_diff = 0.0
    for b, t in enumerate(out_len.tolist()):
        a, c = ref[b, :, :t], np.asarray(y)[b, :, :t]
        agree += int((a.argmax(0) == c.argmax(0)).sum())
        total += t
        max_diff = max(max_diff, float(np.abs(a - c).max()) if a.size else 0.0)
    return {"argmax_agreement": agree / max(total, 1), "frames": total, "max_abs_diff_real": max_diff}
