#!/usr/bin/env python
"""Approximation error of the integer non-linear kernels (intasr.intops.nonlinear) against the
float functions: plots (PNG) and a CSV of max / mean absolute errors, written to a folder.

    .venv/bin/python tools/plot_nonlinear.py OUT_DIR [--seed 0]

Files: errors.csv (one row per function and configuration), exp.png, sigmoid.png, swish.png,
glu.png, softmax.png, layernorm.png. Deterministic for a given seed; runs in a few seconds on CPU.
Errors are measured in real units (the integer result times its output scale minus the float
function of the dequantized input q * S), so the input quantization itself is not counted.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch


from intasr.intops import nonlinear as nl

FIELDS = ["function", "config", "in_scale", "out_bits", "points", "max_abs_err", "mean_abs_err", "unit"]


def _row(rows, function, config, in_scale, out_bits, err, unit="real"):
    err = np.abs(np.asarray(err, dtype=np.float64)).reshape(-1)
    rows.append({"function": function, "config": config, "in_scale": f"{in_scale:g}", "out_bits": out_bits,
                 "points": err.size, "max_abs_err": f"{err.max():.3e}", "mean_abs_err": f"{err.mean():.3e}",
                 "unit": unit})


def _grid(lo, hi, S):
    return torch.arange(int(round(lo / S)), int(round(hi / S)) + 1, dtype=torch.int64)


def exp_errors(rows, out: Path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for S in (0.1, 0.02, 1e-3):
        p = nl.prepare_exp(S)
        q = _grid(-12.0, 0.0, S)
        x = q.double() * S
        got = nl.int_exp(q, p).double() * p.out_scale
        err = (got - torch.exp(x)).numpy()
        _row(rows, "exp", "x in [-12, 0]", S, 31, err)
        axes[1].plot(x.numpy(), err, lw=0.8, label=f"S = {S:g}")
        if S == 0.02:
            axes[0].plot(x.numpy(), torch.exp(x).numpy(), label="exp(x)")
            axes[0].plot(x.numpy(), got.numpy(), "--", label="i-exp")
    axes[0].set(xlim=(-4, 0), xlabel="x", title="i-exp (S = 0.02)")
    axes[0].legend()
    axes[1].set(xlabel="x", ylabel="i-exp - exp", title="absolute error")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "exp.png", dpi=150)
    plt.close(fig)


def sigmoid_errors(rows, out: Path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for bits in (8, 14):
        for S in (0.1, 0.02, 1e-3):
            p = nl.prepare_sigmoid(S, bits)
            q = _grid(-12.0, 12.0, S)
            x = q.double() * S
            got = nl.int_sigmoid(q, p).double() * p.out_scale
            err = (got - torch.sigmoid(x)).numpy()
            _row(rows, "sigmoid", "x in [-12, 12]", S, bits, err)
            if S == 0.02:
                axes[1].plot(x.numpy(), err, lw=0.8, label=f"{bits}-bit output")
                if bits == 8:
                    axes[0].plot(x.numpy(), torch.sigmoid(x).numpy(), label="sigmoid(x)")
                    axes[0].plot(x.numpy(), got.numpy(), "--", label="integer, 8 bit")
    axes[0].set(xlabel="x", title="integer sigmoid (S = 0.02)")
    axes[0].legend()
    axes[1].set(xlabel="x", ylabel="error", title="absolute error (S = 0.02)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "sigmoid.png", dpi=150)
    plt.close(fig)


def swish_errors(rows, out: Path):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for S in (0.1, 0.02, 1e-3):
        p = nl.prepare_swish(S, 14)
        q = _grid(-10.0, 10.0, S)
        x = q.double() * S
        err = (nl.int_swish(q, p).double() * p.out_scale - nl.swish_float(x)).numpy()
        _row(rows, "swish", "x in [-10, 10], sigmoid 14 bit", S, 14, err)
        ax.plot(x.numpy(), err, lw=0.8, label=f"S = {S:g}")
    ax.set(xlabel="x", ylabel="error", title="integer Swish x sigmoid(x): absolute error")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "swish.png", dpi=150)
    plt.close(fig)


def glu_errors(rows, out: Path):
    S = 8.0 / 127  # an int8 input covering [-8, 8]
    p = nl.prepare_glu(S, 14)
    a = torch.arange(-127, 128, dtype=torch.int64)
    A, B = torch.meshgrid(a, a, indexing="ij")
    x = torch.stack([A, B])  # [2, 255, 255]: halves along dim 0
    got = nl.int_glu(x.to(torch.int8), p, dim=0)[0].double() * p.out_scale
    ref = nl.glu_float(x.double() * S, dim=0)[0]
    err = (got - ref).numpy()
    _row(rows, "glu", "int8 a, b in [-8, 8], sigmoid 14 bit", S, 14, err)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sns.heatmap(np.abs(err)[::8, ::8], ax=ax, cmap="viridis", xticklabels=False, yticklabels=False,
                cbar_kws={"label": "|error|"})
    ax.set(xlabel="b (gate) from -8 to 8", ylabel="a from -8 to 8", title="integer GLU a sigmoid(b)")
    fig.tight_layout()
    fig.savefig(out / "glu.png", dpi=150)
    plt.close(fig)


def softmax_errors(rows, out: Path, gen: torch.Generator):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for spread in (1.0, 3.0, 8.0):
        for S in (0.05, 0.01, 1e-3):
            p = nl.prepare_softmax(S, out_bits=8)
            x = torch.randn(64, 8, 64, generator=gen, dtype=torch.float64) * spread
            q = torch.round(x / S).to(torch.int32)
            mask = torch.zeros(64, 1, 64, dtype=torch.bool)
            mask[32:, :, 40:] = True  # padded keys in half of the batch
            got = nl.int_softmax(q, p, mask).double() * p.out_scale
            err = (got - nl.softmax_float(q.double() * S, mask)).numpy()
            _row(rows, "softmax", f"N = 64, logits sd {spread:g}, 8-bit out", S, 8, err)
            if S == 0.01:
                sns.histplot(err.reshape(-1), bins=80, ax=ax, element="step", fill=False, label=f"sd {spread:g}")
    ax.set(xlabel="integer - float probability", yscale="log", title="integer softmax (8 bit, S = 0.01)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "softmax.png", dpi=150)
    plt.close(fig)


def layernorm_errors(rows, out: Path, gen: torch.Generator):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    C = 256
    for S, spread in ((0.05, 40.0), (0.01, 300.0), (1e-3, 2.0)):
        x = (torch.randn(200, C, generator=gen, dtype=torch.float64) * spread
             + torch.randn(200, 1, generator=gen, dtype=torch.float64) * spread).round()
        q = x.to(torch.int32)
        # normalized value itself: gamma 1, beta 0, 16-bit output with scale 2^-10
        p1 = nl.prepare_layernorm(S, np.ones(C), np.zeros(C), 2.0 ** -10, out_bits=16)
        n_int = nl.int_layernorm(q, p1).double() * 2.0 ** -10
        n_ref = nl.layernorm_float(q.double() * S, np.ones(C), np.zeros(C))
        err = (n_int - n_ref).numpy()
        _row(rows, "layernorm", f"C = {C}, normalized value, 16-bit out 2^-10", S, 16, err)
        # affine, 8-bit output: error in output LSBs
        gamma = (torch.randn(C, generator=gen, dtype=torch.float64) * 0.3 + 1).numpy()
        beta = (torch.randn(C, generator=gen, dtype=torch.float64) * 0.2).numpy()
        ref = nl.layernorm_float(q.double() * S, gamma, beta)
        So = ref.abs().max().item() / 127
        p = nl.prepare_layernorm(S, gamma, beta, So)
        err8 = ((nl.int_layernorm(q, p).double() * So - ref) / So).numpy()
        _row(rows, "layernorm", f"C = {C}, affine, 8-bit out", S, 8, err8, unit="output LSB")
        sns.histplot(err8.reshape(-1), bins=60, ax=ax, element="step", fill=False, label=f"S = {S:g}")
    ax.set(xlabel="integer - float (output LSB)", title="integer LayerNorm, 8-bit output")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "layernorm.png", dpi=150)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    gen = torch.Generator().manual_seed(args.seed)
    rows: list[dict] = []
    exp_errors(rows, out)
    sigmoid_errors(rows, out)
    swish_errors(rows, out)
    glu_errors(rows, out)
    softmax_errors(rows, out, gen)
    layernorm_errors(rows, out, gen)
    with open(out / "errors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print("| " + " | ".join(FIELDS) + " |")
    print("|" + "---|" * len(FIELDS))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in FIELDS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
