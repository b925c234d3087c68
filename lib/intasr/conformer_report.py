"""A Conformer-CTC and its integer program, described as tables (the book's Conformer chapter).

The float model: its hyperparameters (``hyperparameters``), its parameters per part
(``parameter_parts``), the shapes along the encoder on one utterance with block 0 recomputed from
its parts (``walk_encoder``, ``block_from_parts``), and the size and BOPs of Table 1
(``size_bops_table``). The integer program: its op kinds (``op_kinds``), the constants of each
integer non-linearity recomputed from the op's input scale and checked against the program
(``nonlinear_constants``), every input code swept through the integer kernel beside the float
function (``nonlinear_sweeps``), and the program's 8-bit codes on real activations against the
correctly rounded float function (``nonlinear_code_check``). Everything is computed from the model
and program given; nothing is read from results files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from intasr import experiments
from intasr.convert_conformer import SIG_BITS
from intasr.intops import nonlinear as nl
from intasr.intops.gelu import GELU_A, GELU_B, int_gelu, prepare_gelu
from intasr.models.convasr import frame_mask
from intasr.program import nonlinear_params as nlp
from intasr.program.torch_ref import attention_mask
from intasr.quant import qrange

# the op kinds computed by an integer approximation of a float function
NONLINEAR = ("gelu", "swish", "glu", "softmax", "layernorm")
# the op kinds whose integer result is exact (products and sums)
LINEAR = ("conv1d", "matmul_qk", "matmul_pv", "add")


def n_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- the float model -------------------------------------------------------------------------

def hyperparameters(model, name: str = "hama Conformer-CTC") -> pd.Series:
    """The architecture of a ConformerCTC in six lines (front end, subsampling, attention, blocks,
    output and decoding, parameter count), read from the model and its config; name: the Series'."""
    enc, fz = model.config["encoder"], model.featurizer
    dec = model.config["decoding"]
    hyper = {
        "features": f"{fz.nfilt} log-mel, hop {fz.hop_length} samples ({1000 * fz.hop_length / fz.sample_rate:.0f} ms)",
        "subsampling": (f"{enc['subsampling']}, factor {enc['subsampling_factor']}, kernel"
                        f" {enc['subsampling_conv_kernel_size']}, {enc['subsampling_activation'].upper()}"),
        "attention": (f"{enc['self_attention_model']}, positional encoding:"
                      f" {enc.get('pos_emb', 'sinusoid')}, {enc['n_heads']} heads"),
        "blocks x d_model": (f"{enc['n_layers']} x {enc['d_model']}, feed-forward"
                             f" {enc['d_model'] * enc['ff_expansion_factor']}, conv kernel {enc['conv_kernel_size']}"),
        "output": (f"{len(model.labels)} labels + blank; greedy decoding of log-probs /"
                   f" {dec['temperature']}, blank {dec['blank_bias']:+}"),
        "parameters": f"{n_parameters(model):,}",
    }
    return pd.Series(hyper, name=name)


def source_line(model) -> str:
    """Where an imported model's weights come from (config ``source``: package, version, asset,
    sha256, BatchNorm)."""
    src = model.config.get("source", {})
    return (f"source: package {src.get('package')} {src.get('version')}, {src.get('asset')}"
            f" (sha256 {str(src.get('sha256'))[:16]}...), BatchNorm: {src.get('batchnorm', 'folded (identity form)')}")


def model_values(model) -> dict[str, str]:
    """The numbers of a ConformerCTC that prose quotes, formatted: parameters (millions, 2
    decimals), blocks, width, depthwise kernel, labels, mel bins, package version, decoding."""
    enc, L0 = model.encoder, model.encoder.layers[0]
    dec = model.config["decoding"]
    return {
        "hama_params_m": f"{n_parameters(model) / 1e6:.2f}", "hama_layers": f"{len(enc.layers)}",
        "hama_d": f"{enc.d_model}", "hama_kernel": f"{L0.conv.depthwise_conv.kernel_size[0]}",
        "hama_labels": f"{len(model.labels)}", "hama_mels": f"{model.featurizer.nfilt}",
        "hama_version": f"{model.config.get('source', {}).get('version')}",
        "dec_temp": f"{dec['temperature']}", "dec_blank": f"{dec['blank_bias']}",
    }


def parameter_parts(model) -> pd.DataFrame:
    """One row per part of a ConformerCTC (front end, subsampling, LayerNorms, feed-forward,
    attention, convolution module, decoder): what it is, how many there are, parameters each, in
    total and as a share of the model. The totals sum to the model's parameter count (checked)."""
    enc, L0 = model.encoder, model.encoder.layers[0]
    d, nL = enc.d_model, len(enc.layers)
    sub0, att, cv, ff = enc.pre_encode.conv[0], L0.self_attn, L0.conv, L0.feed_forward1
    dec = model.decoder.decoder_layers[0]
    rows = [
        ("front end", "STFT as a strided conv (stored kernels), power, mel, log: buffers, no parameters", 1,
         n_parameters(model.preprocessor)),
        ("encoder.pre_encode", f"Conv1d({sub0.in_channels}, {sub0.out_channels}, k{sub0.kernel_size[0]}, "
         f"stride {sub0.stride[0]}), {type(enc.pre_encode.conv[1]).__name__}", 1, n_parameters(enc.pre_encode)),
        ("layers.i.norm_*", f"5 x LayerNorm({d})", nL,
         sum(n_parameters(m) for n, m in L0.named_children() if n.startswith("norm"))),
        ("layers.i.feed_forward1/2", f"2 x [Linear({d}, {ff.linear1.out_features}), Swish, "
         f"Linear({ff.linear2.in_features}, {d})], added with factor {L0.fc_factor}", nL,
         n_parameters(L0.feed_forward1) + n_parameters(L0.feed_forward2)),
        ("layers.i.self_attn", f"{att.h} heads x d_k {att.d_k}: linear_q/k/v/out ({d}, {d}), softmax", nL,
         n_parameters(att)),
        ("layers.i.conv", f"pw Conv1d({d}, {cv.pointwise_conv1.out_channels}), GLU, dw"
         f" Conv1d(k{cv.depthwise_conv.kernel_size[0]}), BatchNorm, Swish, pw Conv1d({d}, {d})", nL, n_parameters(cv)),
        ("decoder", f"Conv1d({dec.in_channels}, {model.decoder.num_classes}, k1)", 1, n_parameters(model.decoder)),
    ]
    parts = pd.DataFrame(rows, columns=["part", "what", "count", "parameters each"])
    parts["parameters"] = parts["count"] * parts["parameters each"]
    if parts["parameters"].sum() != n_parameters(model):
        raise ValueError("the parts do not cover the model's parameters")
    parts["share %"] = 100 * parts["parameters"] / n_parameters(model)
    return parts


def block_from_parts(layer, x, att_mask, pos, pad_mask):
    """A Conformer block computed from its modules by the macaron equations: half a feed-forward,
    attention, the convolution module and half a feed-forward, each on the LayerNorm of the residual
    stream and added to it, then the block's own LayerNorm."""
    h = x + layer.fc_factor * layer.feed_forward1(layer.norm_feed_forward1(x))
    h = h + layer.self_attn(layer.norm_self_att(h), att_mask, pos)
    h = h + layer.conv(layer.norm_conv(h), pad_mask)
    h = h + layer.fc_factor * layer.feed_forward2(layer.norm_feed_forward2(h))
    return layer.norm_out(h)


@dataclass
class EncoderWalk:
    stages: pd.DataFrame      # stage, shape, note: one row per step from waveform to logits
    block0_by_hand: float     # max |block_from_parts - the block's forward| on block 0
    walk_vs_forward: float    # max |logits of the walk - forward_features|
    logits: torch.Tensor      # forward_features' logits and lengths, for later comparisons
    lengths: torch.Tensor


@torch.inference_mode()
def walk_encoder(model, audio, lengths) -> EncoderWalk:
    """Runs a ConformerCTC step by step on a batch (front end, subsampling, every block, decoder),
    recording each step's output shape, and checks block 0 (``block_from_parts``) and the whole
    walk against the model's own forward."""
    enc = model.encoder
    mel, mel_len = model.features(audio, lengths)
    shapes = [("waveform", tuple(audio.shape), f"{int(lengths[0])} samples"),
              ("log-mel (features)", tuple(mel.shape), f"{int(mel_len[0])} frames")]
    x, lens = enc.pre_encode(mel.transpose(1, 2), mel_len)  # [B, T', d]
    x, pos = enc.pos_enc(x)  # without positional encoding: x as it is
    shapes.append(("subsampling", tuple(x.shape), f"{int(lens[0])} frames"))
    pad_mask, att_mask = enc.masks(lens, x.shape[1])
    L0 = enc.layers[0]
    by_hand = float((block_from_parts(L0, x, att_mask, pos, pad_mask) - L0(x, att_mask, pos, pad_mask)).abs().max())
    for i, layer in enumerate(enc.layers):
        x = layer(x, att_mask, pos, pad_mask)
        shapes.append((f"block {i}", tuple(x.shape), f"|x| max {float(x.abs().max()):.1f} (after its LayerNorm)"))
    logits = model.decoder(x.transpose(1, 2))
    shapes.append(("decoder (logits)", tuple(logits.shape), f"{logits.shape[1]} classes"))
    ref_logits, ref_len = model.forward_features(mel, mel_len)
    return EncoderWalk(pd.DataFrame(shapes, columns=["stage", "shape", "note"]), by_hand,
                       float((logits - ref_logits).abs().max()), ref_logits, ref_len)


def engine_agreement(engine_log_probs: np.ndarray, logits, length: int) -> tuple[float, float]:
    """(max |log-prob difference|, share of frames with the same argmax) between a reference
    engine's log-probs [T', classes] and a ConformerCTC's logits [1, classes, T] over the first
    ``length`` frames; the shapes must agree."""
    from intasr.models import ConformerCTC

    ours = ConformerCTC.log_probs(logits)[0, :length].numpy()
    if ours.shape != engine_log_probs.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, engine {engine_log_probs.shape}")
    return (float(np.abs(engine_log_probs - ours).max()),
            float((engine_log_probs.argmax(-1) == ours.argmax(-1)).mean()))


def per_row(decoder: str, summary: dict, seconds: float) -> dict:
    """One row of a PER table from a ``token_error_summary`` (or ``evaluate``) result."""
    return {"decoder": decoder, "PER %": summary["per"], "phoneme errors": summary["phoneme_errors"],
            "phonemes": summary["phonemes"], "95% CI": "[{:.1f}, {:.1f}]".format(*summary["ci95"]),
            "seconds": seconds}


def size_bops_table(large, model, paper_rows: pd.DataFrame, ours=((32, 32), (8, 8), (6, 8)),
                    names=("Conformer-Large", "hama Conformer (this chapter)")) -> pd.DataFrame:
    """Size (MiB) and TBOPs of a meta-device model against the paper's rows (``paper_rows``: Table 1
    rows with w_bits, a_bits, size_mb, bops_t; widest first) with the relative errors, plus the
    attention matmuls counted at b_A x b_A; then the chapter's ``model`` at the W/A of ``ours``.
    names: the model column of the two (``size_bops_values`` finds the first by it)."""
    rows = []
    for r in paper_rows.sort_values("w_bits", ascending=False).itertuples():
        size = experiments.model_size_mb(large, r.w_bits)
        b = experiments.bops(large, r.w_bits, r.a_bits) / 1e12
        rows.append({
            "model": names[0], "W/A": f"{r.w_bits}/{r.a_bits}",
            "size MiB (ours)": size, "size MB (paper)": r.size_mb, "size rel. err %": 100 * (size / r.size_mb - 1),
            "TBOPs (ours)": b, "TBOPs (paper)": r.bops_t, "BOPs rel. err %": 100 * (b / r.bops_t - 1),
            "TBOPs with attention": experiments.bops(large, r.w_bits, r.a_bits, attention=True) / 1e12,
        })
    for w, a in ours:
        rows.append({
            "model": names[1], "W/A": f"{w}/{a}",
            "size MiB (ours)": experiments.model_size_mb(model, w),
            "TBOPs (ours)": experiments.bops(model, w, a) / 1e12,
            "TBOPs with attention": experiments.bops(model, w, a, attention=True) / 1e12,
        })
    return pd.DataFrame(rows)


def size_bops_values(large, table: pd.DataFrame, paper_rows: pd.DataFrame, name: str = "Conformer-Large"
                     ) -> dict[str, str]:
    """What prose quotes about Conformer-Large: parameters (M, BN folded), blocks, width, heads,
    the FP32 row's relative errors, and the parameter count the paper's FP32 size implies at 4 bytes
    per parameter (MB = 10^6 bytes, and MiB)."""
    r32 = table[(table.model == name) & (table["W/A"] == "32/32")].iloc[0]
    paper_mb = float(paper_rows[paper_rows.w_bits == 32].size_mb.iloc[0])
    return {
        "large_params_m": f"{experiments.param_count(large, fold_bn=True) / 1e6:.1f}",
        "large_layers": f"{large.encoder.n_layers}", "large_d": f"{large.encoder.d_model}",
        "large_heads": f"{large.encoder.layers[0].self_attn.h}",
        "large_bops_err": f"{r32['BOPs rel. err %']:+.2f}", "large_size_err": f"{r32['size rel. err %']:+.1f}",
        "paper_params_si": f"{paper_mb * 1e6 / 4 / 1e6:.1f}", "paper_params_mib": f"{paper_mb * 2**20 / 4 / 1e6:.1f}",
    }


# ---- the integer program ------------------------------------------------------------------------

def op_kinds(program) -> pd.DataFrame:
    """Op kinds by count (most common first) with their role: non-linear (approximated), linear /
    exact, or requantization / bookkeeping."""
    hist = pd.DataFrame(Counter(op.kind for op in program.ops).most_common(), columns=["kind", "ops"])
    hist["role"] = hist.kind.map(lambda k: "non-linear (approximated)" if k in NONLINEAR else (
        "linear / exact" if k in LINEAR else "requantization / bookkeeping"))
    return hist


def plot_op_kinds(hist: pd.DataFrame, title: str):
    """A bar per op kind, coloured by role."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(9, 3.2))
    sns.barplot(data=hist, x="kind", y="ops", hue="role", dodge=False, ax=ax)
    ax.set(xlabel="", ylabel="ops", title=title)
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize="small")
    plt.tight_layout()
    return fig


def first_op(program, kind: str):
    return next(op for op in program.ops if op.kind == kind)


@dataclass
class NonlinearParams:
    softmax: object
    swish: object
    glu: object
    gelu: object
    layernorm: object
    ops: dict  # kind -> the program's first op of that kind (block 0's, the subsampling's GELU)


def nonlinear_params(program) -> NonlinearParams:
    """The prepared constants of the first softmax, Swish, GLU, GELU and LayerNorm of a program,
    recomputed from each op's input scale; raises ValueError where they differ from what the
    program stored."""
    ops = {k: first_op(program, k) for k in ("softmax", "swish", "glu", "gelu", "layernorm")}
    sm, sw = ops["softmax"], ops["swish"]
    p = NonlinearParams(nl.prepare_softmax(sm.meta["in_scale"], out_bits=sm.attrs["out_bits"]),
                        nl.prepare_swish(sw.meta["in_scale"], SIG_BITS),
                        nl.prepare_glu(ops["glu"].meta["in_scale"], SIG_BITS),
                        prepare_gelu(ops["gelu"].meta["in_scale"]), nlp.layernorm_params(ops["layernorm"]), ops)
    if not (nlp.exp_attrs(p.softmax.exp) == sm.attrs["exp"] and nlp.exp_attrs(p.swish.exp) == sw.attrs["exp"]
            and (p.gelu.q_b, p.gelu.q_one) == (ops["gelu"].attrs["q_b"], ops["gelu"].attrs["q_one"])):
        raise ValueError("the recomputed constants differ from the program's")
    return p


def nonlinear_constants(p: NonlinearParams) -> pd.DataFrame:
    """One row per non-linearity: op, kind, input scale and its integer constants as text."""
    e, sw, glu, gelu, ln = p.softmax.exp, p.swish, p.glu, p.gelu, p.layernorm
    return pd.DataFrame([
        {"op": p.ops["softmax"].name, "kind": "softmax (i-exp)", "in_scale": p.softmax.in_scale,
         "constants": (f"k = {e.in_shift}, q_ln2 = {e.q_ln2}, q_b = {e.q_b}, q_c = {e.q_c}, P_max = {e.out_max},"
                       f" q_min = {e.q_min}, z_max = {e.z_max}, R = {e.recip} >> {e.recip_shift};"
                       f" K = {p.softmax.recip_bits}, B = {p.softmax.out_bits}")},
        {"op": p.ops["swish"].name, "kind": "swish (sigmoid)", "in_scale": sw.in_scale,
         "constants": (f"k = {sw.exp.in_shift}, q_ln2 = {sw.exp.q_ln2}, q_b = {sw.exp.q_b}, q_c = {sw.exp.q_c},"
                       f" one = P_max = {sw.exp.out_max}, B = {sw.out_bits}")},
        {"op": p.ops["glu"].name, "kind": "glu (sigmoid)", "in_scale": glu.in_scale,
         "constants": f"k = {glu.exp.in_shift}, q_ln2 = {glu.exp.q_ln2}, one = {glu.exp.out_max}, B = {glu.out_bits}"},
        {"op": p.ops["gelu"].name, "kind": "gelu (i-GELU)", "in_scale": gelu.in_scale,
         "constants": f"q_B = {gelu.q_b}, q_one = {gelu.q_one}"},
        {"op": p.ops["layernorm"].name, "kind": "layernorm", "in_scale": p.ops["layernorm"].meta["in_scale"],
         "constants": (f"C = {ln.channels}, h = {ln.h}, E = {ln.eps_int} (r_E = {ln.eps_shift}), F = {ln.norm_bits},"
                       f" U = {ln.u_max}, M = {ln.M} >> {ln.shift}")},
    ])


def nonlinear_values(p: NonlinearParams) -> dict[str, str]:
    """The constants prose quotes (i-exp of the softmax, sigmoid bits, i-GELU, LayerNorm, the
    polynomial coefficients), as text."""
    e = p.softmax.exp
    values = {
        "sm_k": e.in_shift, "sm_qln2": e.q_ln2, "sm_qb": e.q_b, "sm_qc": e.q_c, "sm_pmax": e.out_max,
        "sm_zmax": e.z_max, "sm_qmin": e.q_min, "sig_bits": SIG_BITS, "gelu_qb": p.gelu.q_b,
        "gelu_qone": p.gelu.q_one, "ln_F": p.layernorm.norm_bits, "ln_C": p.layernorm.channels,
        "ln_h": p.layernorm.h, "ln_U": p.layernorm.u_max, "sm_B": p.softmax.out_bits,
        "exp_a": nl.EXP_A, "exp_b": nl.EXP_B, "exp_c": nl.EXP_C, "gelu_a": GELU_A, "gelu_b": GELU_B,
    }
    out = {k: f"{v}" for k, v in values.items()}
    out.update({"sm_scale": f"{p.softmax.in_scale:.2e}", "sm_ln2bits": f"{e.q_ln2.bit_length()}",
                "sm_K": f"{p.softmax.recip_bits}", "sw_scale": f"{p.swish.in_scale:.4f}"})
    return out


def next_requant_step(program, op) -> float:
    """The output scale of the requantize that reads op's output: the 8-bit step after it."""
    return next(o.meta["out_scale"] for o in program.ops if op.outputs[0] in o.inputs and o.kind == "requantize")


def nonlinear_sweeps(program, p: NonlinearParams, exp_range: float = 12.0) -> dict[str, tuple]:
    """{name: (x, float f(x), integer f(x) dequantized, the 8-bit step after it or None)} over every
    input: i-exp at the softmax's input scale over [-exp_range, 0], the sigmoid and Swish over every
    int8 code at the Swish's scale, i-GELU over every int8 code at its scale."""
    codes = torch.arange(-128, 128, dtype=torch.int64)
    S = p.softmax.in_scale
    q = torch.arange(int(round(-exp_range / S)), 1, dtype=torch.int64)
    x = q.double() * S
    sweeps = {"i-exp (softmax, block 0)": (x, torch.exp(x), nl.int_exp(q, p.softmax.exp).double()
                                           * p.softmax.exp.out_scale, None)}
    x = codes.double() * p.swish.in_scale
    sweeps["sigmoid (inside Swish)"] = (x, torch.sigmoid(x), nl.int_sigmoid(codes, p.swish).double()
                                        * p.swish.sig_scale, None)
    sweeps["Swish (FF1, block 0)"] = (x, F.silu(x), nl.int_swish(codes, p.swish).double() * p.swish.out_scale,
                                      next_requant_step(program, p.ops["swish"]))
    x = codes.double() * p.gelu.in_scale
    sweeps["i-GELU (subsampling)"] = (x, F.gelu(x), int_gelu(codes, p.gelu).double() * p.gelu.out_scale,
                                      next_requant_step(program, p.ops["gelu"]))
    return sweeps


def sweep_errors(sweeps: dict) -> pd.DataFrame:
    """Per sweep: its input range, number of inputs, max and mean |integer - float|, and the step."""
    rows = []
    for name, (x, ref, got, step) in sweeps.items():
        err = np.abs((got - ref).numpy())
        rows.append({"function": name, "input range": f"[{float(x.min()):.2f}, {float(x.max()):.2f}]",
                     "inputs": len(x), "max |err|": err.max(), "mean |err|": err.mean(), "8-bit step after it": step})
    return pd.DataFrame(rows)


def plot_sweeps(sweeps: dict):
    """Top: float and integer function per sweep; bottom: their difference, with dashed lines at
    half the 8-bit step that follows (where there is one)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(sweeps), figsize=(15, 6), sharex="col")
    for j, (name, (x, ref, got, step)) in enumerate(sweeps.items()):
        axes[0, j].plot(x, ref, lw=2, label="float")
        axes[0, j].plot(x, got, "--", lw=1.2, label="integer")
        axes[0, j].set(title=name)
        axes[0, j].legend(fontsize="small")
        axes[1, j].plot(x, (got - ref).numpy(), lw=0.8, color="C3")
        for s in ((-step / 2, step / 2) if step is not None else ()):
            axes[1, j].axhline(s, color="k", ls="--", lw=0.8)
        axes[1, j].set(xlabel="x = q S", ylabel="integer - float" if j == 0 else "")
    plt.tight_layout()
    return fig


def gelu_gain(p: NonlinearParams, sweep: tuple) -> dict:
    """i-GELU's gain error: for x >= -b sqrt(2) the kernel returns x q_one |a| S'^2 (S' = S/sqrt 2),
    so the floor in q_one = floor(1/(|a| S'^2)) scales the slope by (1 + gain). Returns the gain,
    the unfloored q_one and the first x of the sweep whose error exceeds half the step (None if none)."""
    sp = p.gelu.in_scale / np.sqrt(2)
    x, ref, got, step = sweep
    beyond = x[(got - ref).abs() > step / 2]
    return {"gain": p.gelu.q_one * abs(GELU_A) * sp * sp - 1, "q_one_exact": 1 / (abs(GELU_A) * sp * sp),
            "beyond": float(beyond.min()) if len(beyond) else None, "x_max": float(x.max())}


@torch.inference_mode()
def nonlinear_code_check(model, program, env: dict, enc_len) -> pd.DataFrame:
    """For every non-linear op of a program traced on a batch (``env``: ``TorchReference().trace``;
    enc_len: valid encoder frames): the program's 8-bit code against the correctly rounded float
    function of the same dequantized input, on valid positions. The code is the op's output for
    softmax and LayerNorm, else the requantize that reads it (whose step and clamp round the float
    result too); ``max |approx. err| / step`` is the error of the integer product before that
    requantize, in steps."""
    consumer = {i: o for o in program.ops for i in o.inputs}  # value -> the op that reads it
    float_fn = {"gelu": F.gelu, "swish": F.silu, "glu": lambda t: F.glu(t, dim=1)}
    rows = []
    for op in (o for o in program.ops if o.kind in NONLINEAR):
        x = env[op.inputs[0]]
        xf = x.double() * op.meta["in_scale"]
        if op.kind == "softmax":
            mask = attention_mask(env[op.inputs[1]], x.shape[-1])
            ref, code_op = nl.softmax_float(xf, mask), op
            valid = ~mask.expand_as(ref)
        else:
            if op.kind == "layernorm":
                ln = model.get_submodule(op.name)
                ref = F.layer_norm(xf.transpose(1, 2), ln.normalized_shape, ln.weight.double(), ln.bias.double(),
                                   ln.eps).transpose(1, 2)
                code_op = op
            else:
                ref, code_op = float_fn[op.kind](xf), consumer[op.outputs[0]]
                if code_op.kind != "requantize":
                    raise ValueError(f"{op.name} is not followed by a requantize")
            valid = frame_mask(enc_len, ref.shape[-1])[:, None, :].expand_as(ref)
        value = program.values[code_op.outputs[0]]
        lo, hi = qrange(value.bits, value.signed)
        want = torch.clamp(torch.round(ref / value.scale), lo, hi)
        diff = (env[code_op.outputs[0]].double() - want)[valid]
        row = {"kind": op.kind, "op": op.name, "values": int(valid.sum()), "codes differ": int((diff != 0).sum()),
               "max code diff": int(diff.abs().max())}
        if code_op is not op:
            err = ((env[op.outputs[0]].double() * op.meta["out_scale"] - ref).abs() / value.scale)[valid]
            row["max |approx. err| / step"] = float(err.max())
        rows.append(row)
    return pd.DataFrame(rows)


def codes_by_kind(codes: pd.DataFrame) -> pd.DataFrame:
    """``nonlinear_code_check`` per kind (first-seen order): ops, values, differing codes (sum and
    percent of values), the largest code difference and approximation error."""
    by_kind = codes.groupby("kind", sort=False).agg(
        ops=("op", "size"), values=("values", "sum"), codes_differ=("codes differ", "sum"),
        max_code_diff=("max code diff", "max"), max_err=("max |approx. err| / step", "max"))
    by_kind["codes differ %"] = 100 * by_kind.codes_differ / by_kind["values"]
    return by_kind


def valid_logits_equal(a, a_len, b, b_len) -> bool:
    """Equal lengths, and every valid frame of logits [B, classes, T] equal (as int64)."""
    a, b = np.asarray(a), np.asarray(b)
    a_len, b_len = np.asarray(a_len), np.asarray(b_len)
    return bool(np.array_equal(a_len, b_len) and all(
        np.array_equal(a[i, :, :t].astype(np.int64), b[i, :, :t].astype(np.int64))
        for i, t in enumerate(a_len.tolist())))


def frame_argmax_agreement(a, b, lengths) -> list[float]:
    """Per utterance: the share of valid frames whose argmax over classes agrees (logits [B, C, T])."""
    return [float((a[i, :, :t].argmax(0) == b[i, :, :t].argmax(0)).double().mean())
            for i, t in enumerate(lengths.tolist())]


def hama_with_batchnorm(audio_dir, utterances: int, batch_size: int = 8):
    """The hama package's Conformer with a BatchNorm per convolution module whose statistics are
    measured on the first ``utterances`` of audio_dir (``restore_conformer_bn``, length-sorted
    batches); returns (model, number of utterances used)."""
    from intasr.data import load_batch, load_dataset
    from intasr.evaluate import length_sorted_batches
    from intasr.models.hama import load_hama_model, restore_conformer_bn

    model = load_hama_model()
    bn_set = load_dataset(audio_dir, require_text=False, limit=utterances)
    batches = [load_batch([bn_set[i] for i in idx]) for idx in length_sorted_batches(bn_set, batch_size)]
    restore_conformer_bn(model, batches, progress=False)
    return model, len(bn_set)
