"""Checks of a converted ConvASR integer program against itself, against an independent backend
and against its float model: the multipliers of every requantization, the values one block
computes, a float-free census, the NumPy replay, batch and padding invariance, the agreement of
integer and float logits (per utterance and per block) and the accumulator bounds.

The measurements of the book's chapter 03. Tables come back as plain rows (one dict each); the
float model's blocks are read through `convasr_probes`.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from .convasr_probes import block_label, recording_block_outputs
from .data import load_batch
from .models.convasr import frame_mask
from .program.torch_ref import TorchReference
from .quant import dyadic_value
from .text import ctc_greedy_decode
from .verify import numpy_forward

INT32_MAX = 2**31 - 1


def requantize_rows(program) -> list[dict]:
    """One row per op with a dyadic multiplier (requantize, rescale): channels, the bits of the
    largest M, the shift range and the range of the multipliers M / 2^shift."""
    rows = []
    for op in program.ops:
        if "M" in op.params:
            M, s = op.params["M"], op.params["shift"]
            rows.append({"op": op.name, "kind": op.kind, "channels": len(M), "M_max_bits": int(M.max()).bit_length(),
                         "shift_min": int(s.min()), "shift_max": int(s.max()),
                         "m_min": float(dyadic_value(M, s).min()), "m_max": float(dyadic_value(M, s).max())})
    return rows


def value_lengths(program) -> dict[str, str]:
    """Each value's lengths value (its time axis), following the mask_time and frames ops: a
    strided conv's output takes the lengths its frames op computes."""
    frames_of = {op.name: op.outputs[0] for op in program.ops if op.kind == "frames"}
    lens = {program.inputs[0]: program.inputs[1]}
    for op in program.ops:
        if op.kind == "mask_time":
            lens[op.outputs[0]] = op.inputs[1]
        elif op.kind != "frames":
            src = lens[op.inputs[0]]
            if op.kind == "conv1d":
                src = frames_of.get(op.name + ".frames", src)
            lens[op.outputs[0]] = src
    return lens


def valid_absmax(t: torch.Tensor, lengths: torch.Tensor) -> int:
    """The largest |value| of t [B, C, T] over its valid frames (t < lengths[b])."""
    mask = frame_mask(lengths, t.shape[-1])[:, None, :]
    return int((t.to(torch.int64).abs() * mask).max())


def traced_rows(program, env: dict, ops) -> list[dict]:
    """For each op of `ops` (not `frames` ops: their output is a lengths value), its output in the traced environment `env` (TorchReference.trace):
    dtype, shape, min, max, largest |value| on valid frames and the value's scale."""
    lens = value_lengths(program)
    rows = []
    for op in ops:
        t = env[op.outputs[0]]
        rows.append({"op": op.name, "kind": op.kind, "output": op.outputs[0],
                     "dtype": str(t.dtype).replace("torch.", ""), "shape": "x".join(map(str, t.shape)),
                     "min": int(t.min()), "max": int(t.max()),
                     "max |valid|": valid_absmax(t, env[lens[op.outputs[0]]]),
                     "scale": program.values[op.outputs[0]].scale})
    return rows


def dtype_census(recorder) -> dict:
    """What a `verify.DtypeRecorder` saw: the number of op outputs, how many were floating point,
    a Counter of output dtypes and one of ATen op names (without the overload)."""
    return {"ops": len(recorder.records), "float ops": len(recorder.float_ops()),
            "dtypes": Counter(str(dt).replace("torch.", "") for _, dt in recorder.records),
            "aten ops": Counter(op.split(".")[1] if op.startswith("aten.") else op for op, _ in recorder.records)}


def numpy_replay(qmodel, utt, max_frames: int) -> dict:
    """Run the first `max_frames` mel frames of `utt` through the integer program with torch
    (`forward_int`) and with the NumPy backend (`verify.numpy_forward`): whether every valid logit
    is equal (`exact`), the largest difference, the frame counts and both run times."""
    audio, lengths = load_batch([utt])
    with torch.inference_mode():
        mel, mel_len = qmodel.features(audio, lengths)
    n = min(max_frames, int(mel_len[0]))
    q = qmodel.quantize_input(mel[:, :, :n])
    t = time.perf_counter()
    with torch.inference_mode():
        ours, ours_len = qmodel.forward_int(q, torch.tensor([n]))
    t_torch = time.perf_counter() - t
    t = time.perf_counter()
    ref, ref_len = numpy_forward(qmodel, q.numpy(), np.array([n]))
    t_np = time.perf_counter() - t
    T = int(ours_len[0])
    exact = int(ref_len[0]) == T and np.array_equal(ref[0, :, :T], ours[0, :, :T].numpy().astype(np.int64))
    return {"frames": n, "out_frames": T, "classes": ref.shape[1], "exact": exact,
            "max_diff": int(np.abs(ref[0, :, :T] - ours[0, :, :T].numpy()).max()), "t_torch": t_torch, "t_numpy": t_np}


def batch_invariance_rows(qmodel, utts, garbage: int = 77) -> list[dict]:
    """Run `utts` as one padded batch, each alone, and the batch with its padded frames set to
    `garbage`: per utterance, whether its logits alone equal those in the batch, and whether the
    garbage padding leaves them unchanged."""
    audio, lengths = load_batch(utts)
    rows = []
    with torch.inference_mode():
        mel, mel_len = qmodel.features(audio, lengths)
        q = qmodel.quantize_input(mel)
        logits, out_len = qmodel.forward_int(q, mel_len)
        noisy = q.clone()
        noisy[~frame_mask(mel_len, q.shape[-1])[:, None, :].expand_as(q)] = garbage
        logits_noisy, _ = qmodel.forward_int(noisy, mel_len)
        for b, u in enumerate(utts):
            k, T = int(mel_len[b]), int(out_len[b])
            alone, alone_len = qmodel.forward_int(q[b: b + 1, :, :k], mel_len[b: b + 1])
            rows.append({"utterance": u.id, "seconds": u.duration, "padded frames in batch": q.shape[-1] - k,
                         "alone == in batch": int(alone_len[0]) == T and torch.equal(alone[0, :, :T], logits[b, :, :T]),
                         "garbage padding == clean": torch.equal(logits_noisy[b, :, :T], logits[b, :, :T])})
    return rows


def block_outputs(program) -> dict[int, str]:
    """Block b's output value: the last requantize or clamp op whose name starts with blocks.b."""
    out = {}
    for op in program.ops:
        if op.kind in ("requantize", "clamp") and op.name.startswith("blocks."):
            out[int(op.name.split(".")[1])] = op.outputs[0]
    return out


def _squared_errors(x_int: torch.Tensor, x_float: torch.Tensor) -> dict:
    return {"err2": float(((x_int - x_float) ** 2).sum()), "ref2": float((x_float**2).sum())}


def logit_agreement(model, qmodels: dict, utts) -> dict:
    """Run every utterance through the float model and each integer model of `qmodels` (tag ->
    IntegerModel, all converted from `model`), one at a time, keeping every value. Returns rows
    per (tag, utterance): frames, squared error and squared norm of the dequantized logits against
    the float logits, frames with the same argmax, whether the greedy transcripts are identical,
    and the transcripts; `blocks`, the same squared sums per block output; `traces`, per tag the
    first utterance's (float, dequantized integer) logits [classes, T]; `acc_seen`, per conv of
    the first integer model, the largest |accumulator| on valid frames."""
    rows, block_rows, traces, acc_seen = [], [], {}, {}
    first = next(iter(qmodels.values()))
    with recording_block_outputs(model) as block_float:
        for u in utts:
            a, l = load_batch([u])
            with torch.inference_mode():
                mel, mel_len = model.features(a, l)
                f_logits, f_len = model.forward_features(mel, mel_len)
            f_text = ctc_greedy_decode(f_logits, f_len, model.labels, time_axis=2)[0]
            for tag, qm in qmodels.items():
                with torch.inference_mode():
                    env = TorchReference().trace(qm.program, qm.quantize_input(mel), mel_len)
                i_logits, i_len = env["logits"], env["logits_lengths"]
                assert torch.equal(i_len, f_len)
                T = int(f_len[0])
                f = f_logits[0, :, :T].double()
                d = i_logits[0, :, :T].double() * qm.logit_scale
                i_text = ctc_greedy_decode(i_logits, i_len, qm.labels, time_axis=2)[0]
                rows.append({"bits": tag, "utterance": u.id, "frames": T, **_squared_errors(d, f),
                             "argmax_same": int((d.argmax(0) == f.argmax(0)).sum()),
                             "transcript_identical": i_text == f_text, "ref": u.text, "float": f_text, "integer": i_text})
                lens = value_lengths(qm.program)
                for b, name in block_outputs(qm.program).items():
                    fo, fl = block_float[b]
                    T_b = int(env[lens[name]][0])
                    assert torch.equal(fl, env[lens[name]])
                    x_i = env[name][0, :, :T_b].double() * qm.program.values[name].scale
                    block_rows.append({"bits": tag, "utterance": u.id, "block": b,
                                       **_squared_errors(x_i, fo[0, :, :T_b].double())})
                if u is utts[0]:
                    traces[tag] = (f, d)
                if qm is first:
                    for op in qm.int_convs():
                        v = valid_absmax(env[op.outputs[0]], env[lens[op.outputs[0]]])
                        acc_seen[op.name] = max(v, acc_seen.get(op.name, 0))
    return {"rows": rows, "blocks": block_rows, "traces": traces, "acc_seen": acc_seen}


def pooled_agreement(agree):
    """Per bit width of an agreement frame (logit_agreement's rows): total frames, the pooled
    relative L2 error sqrt(sum err2 / sum ref2), the argmax agreement in % of frames and the share
    (%) of identical transcripts."""
    import numpy as np

    pooled = agree.groupby("bits").agg(frames=("frames", "sum"), err2=("err2", "sum"), ref2=("ref2", "sum"),
                                       argmax_same=("argmax_same", "sum"),
                                       transcripts_identical=("transcript_identical", "mean"))
    pooled["rel_l2"] = np.sqrt(pooled.err2 / pooled.ref2)
    pooled["argmax_agree %"] = 100 * pooled.argmax_same / pooled.frames
    pooled["transcripts_identical %"] = 100 * pooled.transcripts_identical
    return pooled[["frames", "rel_l2", "argmax_agree %", "transcripts_identical %"]]


def block_error_table(block_rows, n_blocks: int):
    """The relative L2 error of each block's output per bit width, pooled over utterances
    (columns bits, block, err2, ref2, rel_l2, name: C1, B1.., C2, C3)."""
    import pandas as pd

    lay = pd.DataFrame(block_rows).groupby(["bits", "block"], as_index=False)[["err2", "ref2"]].sum()
    lay["rel_l2"] = np.sqrt(lay.err2 / lay.ref2)
    lay["name"] = lay.block.map(lambda b: block_label(b, n_blocks))
    return lay


def conv_kind(op) -> str:
    """'decoder', 'residual', 'depthwise' (groups > 1), 'pointwise' (kernel 1) or 'conv'."""
    if op.name == "decoder":
        return "decoder"
    if ".residual." in op.name:
        return "residual"
    if op.attrs["groups"] > 1:
        return "depthwise"
    return "pointwise" if op.params["weight"].shape[-1] == 1 else "conv"


def accumulator_rows(qmodel, acc_seen: dict | None = None) -> list[dict]:
    """One row per integer conv: kind, weight shape, input type, the largest sum |q_W| of an output
    channel, the largest |q_b|, the proven worst-case |acc| (the op's `bound`), that over the
    int32 limit, the largest |acc| seen (`acc_seen`) and the accumulator dtype."""
    rows = []
    for op in qmodel.int_convs():
        x = qmodel.program.values[op.inputs[0]]  # the conv's (masked) input: its range is what the bound uses
        w, bias = op.params["weight"], op.params.get("bias")
        bound = op.meta["bound"]
        rows.append({
            "layer": op.name, "kind": conv_kind(op), "weight": "x".join(map(str, w.shape)),
            "input": f"{'int' if x.signed else 'uint'}{x.bits}",
            "max sum|w|": int(w.to(torch.int64).abs().flatten(1).sum(1).max()),
            "max |bias|": int(bias.to(torch.int64).abs().max()) if bias is not None else 0,
            "worst-case |acc|": bound, "bound / int32 max": bound / INT32_MAX,
            "seen max |acc|": (acc_seen or {}).get(op.name, 0), "accumulator": op.attrs["acc_dtype"],
        })
    return rows
