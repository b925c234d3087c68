"""The figures of the book's first four chapters (FP32 baseline, quantization basics, integer
inference, synthetic data), one function each: it draws from the data it is given and shows the
figure. matplotlib and seaborn (the `plots` extra) are imported when a figure is drawn.
"""

from __future__ import annotations

import warnings


def book_style(precision: int = 3) -> None:
    """The chapters' look: seaborn's whitegrid theme, pandas tables with `precision` decimals, and
    no tqdm warning about missing ipywidgets (a headless run prints plain progress bars)."""
    import pandas as pd
    import seaborn as sns
    from tqdm import TqdmWarning

    warnings.simplefilter("ignore", TqdmWarning)
    sns.set_theme(context="notebook", style="whitegrid")
    pd.set_option("display.precision", precision)


def _plt():
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


# chapter 01 ---------------------------------------------------------------------------------------

def block_parameters(arch) -> None:
    """Bar chart of the parameters per block of an architecture table (convasr_probes), by stage."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    sns.barplot(data=arch, x="block", y="params", hue="stage", dodge=False, ax=ax)
    ax.set(ylabel="parameters", xlabel="", title="QuartzNet-15x5: parameters per block")
    ax.set_ylim(0, arch["params"].max() * 1.45)
    ax.legend(ncols=4, fontsize="small", loc="upper left")
    plt.tight_layout()
    plt.show()


def waveform_and_mel(utt, audio, lengths, mel, n_frames: int) -> None:
    """An utterance's waveform (16 kHz) above its first n_frames normalized log-mel frames."""
    import numpy as np

    plt, _ = _plt()
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5), height_ratios=[1, 2.2], sharex=True)
    ax0.plot(np.arange(int(lengths[0])) / 16000, audio[0].numpy(), lw=0.4)
    ax0.set(ylabel="amplitude", title=f"{utt.id}: “{utt.text}”")
    im = ax1.imshow(mel[0, :, :n_frames].numpy(), origin="lower", aspect="auto", cmap="magma",
                    extent=[0, n_frames * 0.01, 0, mel.shape[1]])
    ax1.set(xlabel="time (s)", ylabel="mel band")
    ax1.grid(False)
    fig.colorbar(im, ax=[ax0, ax1], label="normalized log-mel", shrink=0.6)
    plt.show()


def running_variance_histogram(rv, kinds, dead) -> None:
    """Histogram of log10 running variances by BatchNorm kind, leaving out the `dead` channels."""
    import numpy as np
    import pandas as pd

    plt, sns = _plt()
    stats = pd.DataFrame({"log10 running_var": np.log10(rv[~dead]), "BatchNorm": kinds[~dead]})
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sns.histplot(data=stats, x="log10 running_var", hue="BatchNorm", bins=80, element="step", ax=ax)
    ax.set(title=f"Restored running variances, {rv.size:,} channels ({int(dead.sum())} below 1e-12 not shown)")
    plt.show()


def ctc_posteriors(log_probs, symbols, max_frames: int = 150) -> None:
    """The CTC posteriors of the first frames (one row per symbol, the blank last), 20 ms a frame."""
    plt, _ = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    show = min(log_probs.shape[0], max_frames)
    im = ax.imshow(log_probs[:show].T.exp().numpy(), origin="lower", aspect="auto", cmap="Greys",
                   extent=[0, show * 0.02, -0.5, len(symbols) - 0.5])
    ax.set_yticks(range(len(symbols)), ["␣" if s == " " else s for s in symbols], fontsize=7)
    ax.set(xlabel="time (s)", title="CTC posteriors, first frames (dark = probable; top row = blank)")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="probability")
    plt.show()


def wer_interval_and_speakers(result, paper_wer: float, by_speaker) -> None:
    """Left: our WER with its 95 % interval beside the paper's; right: WER per speaker, annotated
    with word errors / words (`by_speaker`: a frame indexed by speaker)."""
    plt, sns = _plt()
    lo, hi = result["ci95"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.3), width_ratios=[1, 1.6])
    ax0.errorbar([0], [result["wer"]], yerr=[[result["wer"] - lo], [hi - result["wer"]]], fmt="o", capsize=6)
    ax0.plot([1], [paper_wer], "D", color="C3")
    ax0.set_xticks([0, 1], [f"ours\n{result['words']} words\n(95% CI)", "paper\nfull split"])
    ax0.set(xlim=(-0.6, 1.6), ylabel="WER %", title="test-other, FP32")
    sns.barplot(data=by_speaker.reset_index(), x="speaker", y="WER %", color="C0", ax=ax1)
    ax1.set(title="WER by speaker")
    for i, (_, r) in enumerate(by_speaker.iterrows()):
        ax1.text(i, r["WER %"] + 0.3, f"{r['word_errors']:.0f}/{r['words']:.0f} words", ha="center", fontsize=8)
    plt.tight_layout()
    plt.show()


# chapter 02 ---------------------------------------------------------------------------------------

def sqnr_against_bits(sweep, min_bits: int, max_bits: int) -> None:
    """SQNR against bit width per tensor (`sweep`: weight_error_sweep rows with a `tensor` column),
    one line per clipping x granularity, with a dotted 6.02 dB-per-bit reference."""
    import numpy as np

    plt, sns = _plt()
    g = sns.relplot(data=sweep, x="bits", y="sqnr_db", hue="clipping", style="granularity", col="tensor",
                    kind="line", markers=True, height=3.4, aspect=1.05, facet_kws={"sharey": True})
    g.set_titles(col_template="{col_name}")
    for ax in g.axes.flat:
        bits = np.arange(min_bits, max_bits + 1)
        ax.plot(bits, 6.02 * bits - 6.02 * 8 + 40, color="grey", lw=0.8, ls=":")  # slope reference
        ax.set(ylabel="SQNR (dB)")
    g.figure.suptitle("Weight rounding error vs bit width (dotted: 6.02 dB per bit)", y=1.03)
    plt.show()


def weight_ranges(w, label: str, alphas: dict[str, float], live) -> None:
    """Left: histogram of the per-output-channel max|w| of the `live` channels; right: all weights
    (log density) with the per-tensor clipping range of each method in `alphas`."""
    plt, sns = _plt()
    ch_max = w.flatten(1).abs().amax(1)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.2))
    sns.histplot(ch_max[live].numpy(), bins=50, ax=ax0)
    ax0.set(xlabel="max|w| of an output channel", title=f"{label}: per-channel ranges")
    sns.histplot(w.flatten().numpy(), bins=200, ax=ax1, stat="density")
    for (method, a), color in zip(alphas.items(), ["C3", "C2", "C1"]):
        ax1.axvline(a, color=color, ls="--", label=f"{method}: alpha={a:.2f}")
        ax1.axvline(-a, color=color, ls="--")
    ax1.set(yscale="log", xlabel="w", title="all weights, per-tensor 4-bit ranges")
    ax1.legend(fontsize="small")
    plt.tight_layout()
    plt.show()


def activation_ranges(vals, act) -> None:
    """Left: histogram of the activation values with the 8-bit ranges of `act` (unsigned_range_rows);
    right: SQNR per range and bit width."""
    plt, sns = _plt()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.4), width_ratios=[1.3, 1])
    sns.histplot(vals.numpy(), bins=150, ax=ax0)
    for (label, a), color in zip(act[act.bits == 8].set_index("range")["alpha"].items(), ["C3", "C2", "C0", "C1"]):
        ax0.axvline(a, color=color, ls="--", label=f"{label}: {a:.1f}")
    ax0.set(yscale="log", xlabel="activation value", title="decoder input (C3 output, after ReLU), held-out utterance")
    ax0.legend(fontsize="x-small")
    sns.barplot(data=act, x="bits", y="SQNR dB", hue="range", ax=ax1)
    ax1.set(title="unsigned quantization of it")
    ax1.legend(fontsize="x-small")
    plt.tight_layout()
    plt.show()


# chapter 03 ---------------------------------------------------------------------------------------

def logit_agreement(traces: dict, titles: dict) -> None:
    """Per bit width (key of `traces`: (float logits, dequantized integer logits)): a log-density
    hexbin of integer against float logits with the diagonal, titled from `titles`."""
    plt, _ = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (tag, (f, d)) in zip(axes, traces.items()):
        ax.hexbin(f.flatten().numpy(), d.flatten().numpy(), gridsize=80, bins="log", cmap="viridis", mincnt=1)
        lim = [float(min(f.min(), d.min())), float(max(f.max(), d.max()))]
        ax.plot(lim, lim, "r--", lw=1, label="y = x")
        ax.set(xlabel="float logit", ylabel="integer logit x logit scale", title=titles[tag])
        ax.legend(loc="upper left")
    plt.tight_layout()
    plt.show()


def block_error(lay, labels: list[str]) -> None:
    """Relative L2 error of each block's output (rows bits, block, rel_l2) per bit width, log scale,
    the x axis labelled with the blocks' names."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.4))
    sns.lineplot(data=lay, x="block", y="rel_l2", hue="bits", marker="o", ax=ax)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize="small")
    ax.set(ylabel="relative L2 error of the block output", xlabel="", yscale="log",
           title="integer vs float block outputs, pooled over the evaluation utterances")
    plt.tight_layout()
    plt.show()


def accumulator_bounds(acc_table, int32_max: int) -> None:
    """Per integer conv in program order: its worst-case |acc| bound and the largest |acc| seen,
    both over int32_max, log scale, with the int32 limit as a red line."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.4))
    sns.scatterplot(data=acc_table.reset_index(), x="index", y="bound / int32 max", hue="kind",
                    style="accumulator", ax=ax)
    sns.scatterplot(x=acc_table.index, y=acc_table["seen max |acc|"] / int32_max, color="grey", marker=".",
                    ax=ax, label="seen max |acc|")
    ax.axhline(1.0, color="r", ls="--", lw=1)
    ax.set(yscale="log", xlabel="integer conv (program order)", ylabel="|acc| / (2^31 - 1)",
           title="worst-case accumulator bound per layer (above the red line: int64)")
    ax.legend(fontsize="x-small", ncol=3)
    plt.tight_layout()
    plt.show()


# chapter 04 ---------------------------------------------------------------------------------------

def synthesis_loss(curves, reference, n_batches: int, n_bns: int, batch_size: int, frames: int, lr: float) -> None:
    """The loss curve of every synthetic batch (log scale), with one dashed line per reference
    input (`reference`: rows input, loss (Eq. 2))."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    sns.lineplot(data=curves, x="iteration", y="loss", hue="batch", palette="viridis", legend=n_batches <= 8, ax=ax)
    for (label, value), color in zip(reference.set_index("input")["loss (Eq. 2)"].items(), ["C7", "C3", "C2"]):
        ax.axhline(value, color=color, ls="--", lw=1, label=label)
    ax.set(yscale="log", ylabel=f"loss (Eq. 2, sum over {n_bns} BatchNorms)",
           title=f"Synthetic data generation: B={batch_size}, T={frames}, lr={lr}")
    ax.legend(fontsize="x-small", loc="upper right")
    plt.show()


def spectrogram_panels(panels, texts) -> None:
    """One normalized log-mel spectrogram per (title, [64, T] tensor) of `panels`, clipped to +-3,
    each titled with its transcript from `texts` (cut at 90 characters)."""
    plt, _ = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.9 * len(panels)), sharex=True)
    for ax, (title, m), text in zip(axes, panels, texts):
        im = ax.imshow(m.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-3, vmax=3,
                       extent=[0, m.shape[-1] * 0.01, 0, m.shape[0]])
        shown = text[:90] + ("..." if len(text) > 90 else "") if text else "(nothing)"
        ax.set_title(f"{title}:  “{shown}”", fontsize="small", loc="left")
        ax.set_ylabel("mel band")
        ax.grid(False)
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes, label="normalized log-mel (clipped to ±3)", shrink=0.5)
    plt.show()


BN_MATCH_PALETTE = {"synthetic": "C0", "random U[-3, 3]": "C3", "real": "C2"}


def batchnorm_match_scatter(per_channel, show_layers) -> None:
    """Per layer in `show_layers`: batch mean against running mean (top) and batch std against
    running std (bottom, log-log, channels above 1e-4) per input kind, with the diagonal."""
    plt, sns = _plt()
    fig, axes = plt.subplots(2, len(show_layers), figsize=(4.2 * len(show_layers), 7.5))
    for j, name in enumerate(show_layers):
        d = per_channel[per_channel.layer == name]
        for i, (x, y) in enumerate([("running mean", "batch mean"), ("running std", "batch std")]):
            ax = axes[i, j]
            if i == 1:  # log-log; channels with (near) zero running variance are left out
                d = d[(d[x] > 1e-4) & (d[y] > 1e-4)]
            sns.scatterplot(data=d, x=x, y=y, hue="input", palette=BN_MATCH_PALETTE, s=8, alpha=0.6, linewidth=0,
                            ax=ax, legend=(i == 0 and j == 0))
            lo, hi = float(d[[x, y]].min().min()), float(d[[x, y]].max().max())
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls=":")
            ax.set_title(f"{name}" if i == 0 else "", fontsize="small")
            if i == 1:
                ax.set(xscale="log", yscale="log")
                ax.tick_params(which="minor", labelbottom=False, labelleft=False)
    axes[0, 0].legend(fontsize="x-small", markerscale=2)
    fig.suptitle("BatchNorm inputs: per-channel batch statistics vs running statistics (diagonal = perfect match)")
    plt.tight_layout()
    plt.show()


def batchnorm_match_per_layer(per_layer) -> None:
    """Per layer index: the KL term of Eq. 2 (left) and the median batch std / running std (right),
    one line per input kind, log scale."""
    plt, sns = _plt()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 3.6))
    sns.lineplot(data=per_layer, x="layer index", y="KL term", hue="input", palette=BN_MATCH_PALETTE, ax=ax0)
    ax0.set(yscale="log", title="per-layer KL term of Eq. 2")
    sns.lineplot(data=per_layer, x="layer index", y="std ratio (median over channels)", hue="input",
                 palette=BN_MATCH_PALETTE, ax=ax1, legend=False)
    ax1.axhline(1, color="k", lw=0.8, ls=":")
    ax1.set(yscale="log", title="batch std / running std, median over channels")
    plt.tight_layout()
    plt.show()
