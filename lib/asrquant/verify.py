"""Proofs that the integer model is what it claims to be.

1. Float-free: a TorchDispatchMode records the output dtype of every op that runs inside
   `forward_int`; no floating-point tensor may appear between the quantized input and the logits.
2. Bit-exact: an independent NumPy runner (`numpy_forward`, built only on `intops.reference`,
   which uses no torch) recomputes the integer logits from the saved integer tensors; every
   value must be equal.
3. Batch/padding invariance: an utterance alone and inside a padded batch gives identical integer
   logits on its valid frames (so identical transcripts).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .convert import IntegerConvASR
from .intops import reference as ref


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


def float_ops_in_forward(qmodel: IntegerConvASR, q: torch.Tensor, lengths: torch.Tensor):
    """Run `forward_int` under the recorder; return (float ops seen, number of ops recorded)."""
    with DtypeRecorder() as rec:
        qmodel.forward_int(q, lengths)
    return rec.float_ops(), len(rec.records)


def numpy_forward(qmodel: IntegerConvASR, q: np.ndarray, lengths: np.ndarray):
    """Independent NumPy replay of `forward_int` from the model's integer tensors."""
    def arr(t):
        return None if t is None else t.numpy().astype(np.int64)

    def out_len(conv, lens):
        k = conv.weight.shape[-1]
        return (lens + 2 * conv.padding - conv.dilation * (k - 1) - 1) // conv.stride + 1

    def acc(conv, x, lens):
        return ref.conv1d_ref(ref.mask_time_ref(x, lens), arr(conv.weight), arr(conv.bias), conv.stride,
                              conv.padding, conv.dilation, conv.groups)

    lengths = np.asarray(lengths, dtype=np.int64)
    xs = [np.asarray(q, dtype=np.int64)]
    for block in qmodel.blocks:
        x, lens = xs[-1], lengths
        for conv in block.convs[:-1]:
            x = ref.requantize_ref(acc(conv, x, lens), arr(conv.M), arr(conv.shift), conv.out_bits, conv.out_signed)
            lens = out_len(conv, lens)
        last = block.convs[-1]
        if block.residual:
            total = ref.rescale_ref(acc(last, x, lens), arr(last.M), arr(last.shift))
            for x_in, conv in zip(xs, block.residual):
                total = ref.add_ref(total, ref.rescale_ref(acc(conv, x_in, lengths), arr(conv.M), arr(conv.shift)))
            y = np.clip(total, *ref.qrange_ref(last.out_bits, signed=False))
        else:
            y = ref.requantize_ref(acc(last, x, lens), arr(last.M), arr(last.shift), last.out_bits, last.out_signed)
        lens = out_len(last, lens)
        xs = xs + [y] if block.dense else [y]
        lengths = lens
    d = qmodel.decoder
    return ref.rescale_ref(acc(d, xs[-1], lengths), arr(d.M), arr(d.shift)), lengths


def _valid_equal(a: torch.Tensor, a_len: int, b: torch.Tensor, b_len: int) -> bool:
    return a_len == b_len and torch.equal(a[:, :a_len], b[:, :b_len])


def verify(qmodel: IntegerConvASR, audio: torch.Tensor, lengths: torch.Tensor, numpy_items: int = 1) -> dict:
    """Run the three checks on a padded batch of audio; returns a report with `passed`."""
    report: dict = {}
    with torch.inference_mode():
        mel, mel_len = qmodel.features(audio, lengths)
        q = qmodel.quantize_input(mel)
    report["input_dtype"] = str(q.dtype)

    floats, n_ops = float_ops_in_forward(qmodel, q, mel_len)
    report["float_free"] = {"passed": not floats, "ops_recorded": n_ops,
                            "float_ops": sorted({f"{op} -> {dt}" for op, dt in floats})[:10]}

    with torch.inference_mode():
        logits, out_len = qmodel.forward_int(q, mel_len)
    report["logits_dtype"] = str(logits.dtype)
    # NumPy replay of the shortest utterances (its int64 loops are slow)
    order = torch.argsort(mel_len)[:numpy_items]
    exact, max_diff = True, 0
    for b in order.tolist():
        n = int(mel_len[b])
        np_logits, np_len = numpy_forward(qmodel, q[b:b + 1, :, :n].numpy(), np.array([n]))
        t = int(out_len[b])
        ours = logits[b, :, :t].numpy().astype(np.int64)
        same = int(np_len[0]) == t and np.array_equal(np_logits[0, :, :t], ours)
        exact &= same
        if int(np_len[0]) == t:
            max_diff = max(max_diff, int(np.abs(np_logits[0, :, :t] - ours).max()))
    report["numpy_bit_exact"] = {"passed": bool(exact), "utterances": len(order), "max_abs_diff": max_diff}

    # integer level: the same integer input alone vs in the padded batch -> identical integers
    invariant, same_text = True, True
    from .text import ctc_greedy_decode

    batch_text = ctc_greedy_decode(logits, out_len, qmodel.labels, time_axis=2)
    with torch.inference_mode():
        for b in range(audio.shape[0]):
            n = int(mel_len[b])
            alone, alone_out = qmodel.forward_int(q[b:b + 1, :, :n], mel_len[b:b + 1])
            invariant &= _valid_equal(alone[0], int(alone_out[0]), logits[b], int(out_len[b]))
            # end to end from audio (the float front end may round differently by batch shape)
            alone_mel, alone_len = qmodel.features(audio[b:b + 1, : lengths[b]], lengths[b:b + 1])
            a_logits, a_len = qmodel.forward_int(qmodel.quantize_input(alone_mel), alone_len)
            same_text &= ctc_greedy_decode(a_logits, a_len, qmodel.labels, time_axis=2)[0] == batch_text[b]
    report["batch_invariance"] = {"passed": bool(invariant and same_text), "utterances": int(audio.shape[0]),
                                  "integer_logits_identical": bool(invariant), "transcripts_identical": bool(same_text)}
    report["int64_accumulator_layers"] = qmodel.int64_layers()
    report["passed"] = all(report[k]["passed"] for k in ("float_free", "numpy_bit_exact", "batch_invariance"))
    return report
