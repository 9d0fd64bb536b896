"""Parts 2 and 3's figures: pruning, filter removal, Tucker-2."""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from common.methods import METHODS
from common.plots import (CHANCE, METHOD_COLOURS, footnote, percent, save, settings_line,
                          zoom_panels)


def plot_reconstruction_vs_rank(reconstruction, path):
    """Part 3: relative error of one layer's Tucker-2 approximation against rank."""
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    r1_fixed, r2_fixed = reconstruction["r1_fixed_64"], reconstruction["r2_fixed_64"]
    ax.plot(r1_fixed["r2"], r1_fixed["error"], "o-", label="R1 = 64, R2 varies")
    ax.plot(r2_fixed["r1"], r2_fixed["error"], "s--", label="R2 = 64, R1 varies")
    if "equal_ranks" in reconstruction:
        both = reconstruction["equal_ranks"]
        ax.plot(both["rank"], both["error"], "^:", color="C2",
                label="R1 = R2 (full rank: exact)")
    ax.set(xlabel="rank", ylabel="relative error  ||W - Ŵ|| / ||W||", ylim=(0, None),
           title=f"Tucker-2 reconstruction error, layer {reconstruction['layer']} "
                 f"{tuple(reconstruction['kernel_shape'])}")
    percent(ax)
    ax.grid(alpha=0.3)
    return save(fig, path, legend=ax, ncol=2, bottom=0.1)



def _sweep_xy(sweep, key):
    rows = sorted(sweep, key=lambda r: r["k"])
    return [r["k"] for r in rows], [r[key] for r in rows], rows



def plot_accuracy_vs_k(results, path):
    """Part 3: accuracy on the validation split of the decomposed model against
    k (ranks = k/8 of the channels): as decomposed, batch norm re-estimated,
    fine-tuned; the fine-tuned models' test accuracy (the report) beside."""
    ks, acc, rows = _sweep_xy(results["sweep"], "validation_accuracy")
    original = results["original"]["validation_accuracy"]
    colour = METHOD_COLOURS["tucker"]

    def draw(ax):
        ax.plot(ks, acc, "o:", color=colour, mfc="white", label="decomposed")
        ax.plot(ks, [r["validation_accuracy_recalibrated"] for r in rows], "s--", color=colour,
                mfc="white", label="decomposed, batch norm re-estimated")
        tuned = [(r["k"], r["validation_accuracy_fine_tuned"]) for r in rows
                 if r.get("validation_accuracy_fine_tuned") is not None]
        if tuned:
            ax.plot(*zip(*tuned), "^-", color=colour, lw=2, label="decomposed + fine-tuned")
        tested = [(r["k"], r["test_accuracy"]) for r in rows if r.get("test_accuracy")]
        if tested:
            ax.plot(*zip(*tested), "x", color="k", ms=7, label="its test accuracy (report)")
        ax.axhline(original, color="k", ls=":", label="original (validation)")
        ax.set(xlabel="k  (R1 = c·k/8, R2 = f·k/8)", ylabel="validation accuracy",
               xticks=range(1, 9))
    fig, full, _ = zoom_panels("Accuracy after Tucker-2 decomposition", draw,
                                (original - 0.12, original + 0.02))
    footnote(fig, settings_line(results))
    return save(fig, path, legend=full, ncol=3, bottom=0.14)


def plot_forward_time_vs_k(results, timing, path):
    """Part 3: forward time of each k's model over the validation images,
    median and min-max bars, from one timing block (one machine)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    models = timing["models"]
    ks = sorted(int(name[1:]) for name in models if name.startswith("k"))
    times = [models[f"k{k}"] for k in ks]
    median = [t["median"] for t in times]
    spread = [[t["median"] - t["min"] for t in times], [t["max"] - t["median"] for t in times]]
    ax.errorbar(ks, median, yerr=spread, fmt="o-", capsize=4, color=METHOD_COLOURS["tucker"],
                label="decomposed (median, min-max)")
    original = models["original"]
    ax.axhline(original["median"], color="k", ls="--", label="original (median)")
    ax.axhspan(original["min"], original["max"], color="k", alpha=0.1, label="original (min-max)")
    params = timing["params"]
    ax.set(xlabel="k  (R1 = c·k/8, R2 = f·k/8)", ylim=(0, None), xticks=range(1, 9),
           ylabel=f"seconds per pass over {params['images']:,} images",
           title=f"Forward time in Keras (batch {params['batch_size']}, "
                 f"{params['repeats']} interleaved rounds)")
    ax.grid(alpha=0.3)
    footnote(fig, f"{timing['label']}, {timing['machine']['logical_cores']} threads; "
                   f"{settings_line(results)}")
    return save(fig, path, legend=ax, ncol=3, bottom=0.14)


# Up to this many layers, one line each (the study's figure); more (a
# ResNet-56 has 58) read better as a grid of layers x rates.
MAX_SENSITIVITY_LINES = 12


def sensitivity_grid(rows):
    """The rates any row measured (sorted) and a (rows x rates) array of
    validation accuracy, NaN where a row lacks that rate."""
    rates = sorted({rate for row in rows for rate in row["prune_rates"]})
    grid = np.full((len(rows), len(rates)), np.nan)
    for i, row in enumerate(rows):
        for rate, accuracy in zip(row["prune_rates"], row["validation_accuracy"]):
            grid[i, rates.index(rate)] = accuracy
    return rates, grid


def plot_layer_sensitivity(results, path):
    """Part 2: validation accuracy against prune rate when only one layer is
    pruned: one line per layer, or for more than `MAX_SENSITIVITY_LINES`
    layers one row per layer of a grid coloured by accuracy."""
    layers = sorted(results["layer_sensitivity"].items(), key=lambda item: item[1]["index"])
    labels = [f"{row['index']}: {name} {tuple(row['shape'])}" for name, row in layers]
    dense = results["dense"]["validation_accuracy"]
    title = "Pruning one layer at a time, no retraining (1 = input side)"
    if len(layers) > MAX_SENSITIVITY_LINES:
        rates, grid = sensitivity_grid([row for _, row in layers])
        fig, ax = plt.subplots(figsize=(9, 1.6 + 0.16 * len(layers)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=CHANCE, vmax=dense,
                          interpolation="nearest")
        ax.set_xticks(range(len(rates)), [f"{100 * r:g}%" for r in rates])
        ax.set_yticks(range(len(layers)), labels, fontsize=6)
        ax.set(xlabel="weights of that layer pruned", title=title)
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        bar.set_label(f"validation accuracy (top: unpruned, {100 * dense:.1f}%; "
                      "bottom: chance)")
        percent(bar.ax)
        footnote(fig, settings_line(results))
        return save(fig, path)
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, ((name, row), label) in enumerate(zip(layers, labels)):
        ax.plot(row["prune_rates"], row["validation_accuracy"], ms=4, color=plt.cm.tab10(i % 10),
                marker="osD^v<>ph"[i % 9], ls=("-", "--", "-.", ":")[i % 4], label=label)
    ax.axhline(dense, color="k", ls="--", lw=0.8, label="unpruned")
    ax.axhline(CHANCE, color="grey", ls=":", lw=0.8, label="chance")
    ax.set(xlabel="weights of that layer pruned", ylabel="validation accuracy", ylim=(0, 1),
           title=title)
    percent(ax)
    percent(ax, "x")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    footnote(fig, settings_line(results))
    return save(fig, path)


def plot_global_vs_uniform(results, path):
    """Part 2: one global magnitude threshold vs the same rate in every layer."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for kind, marker, ls in (("global", "o", "-"), ("uniform", "s", "--")):
        curve = results[kind]
        label = "one global threshold" if kind == "global" else "same rate in every layer"
        ax.plot(curve["sparsity"], curve["validation_accuracy"], marker + ls, color="C0",
                label=label)
        ax.plot(curve["sparsity"], curve["validation_accuracy_recalibrated"], marker + ls,
                color="C9", mfc="white", label=f"{label}, batch norm re-estimated")
    ax.axhline(results["dense"]["validation_accuracy"], color="k", ls=":", lw=0.8,
               label="unpruned")
    ax.set(xlabel="weights pruned overall", ylabel="validation accuracy", ylim=(0, 1),
           title="Global vs uniform magnitude pruning, no retraining")
    percent(ax)
    percent(ax, "x")
    ax.grid(alpha=0.3)
    footnote(fig, settings_line(results))
    return save(fig, path, legend=ax, ncol=2, bottom=0.18)


def plot_finetune(results, path):
    """Part 2: validation accuracy of globally pruned models without training
    and after fine-tuning; the fine-tuned models' test accuracy beside."""
    rows = sorted(results["finetune"], key=lambda r: r["sparsity"])
    sparsity = [r["sparsity"] for r in rows]
    dense = results["dense"]["validation_accuracy"]
    colour = METHOD_COLOURS["pruned"]

    def draw(ax):
        ax.plot(sparsity, [r["validation_accuracy_pruned"] for r in rows], "o:", color=colour,
                mfc="white", label="pruned")
        ax.plot(sparsity, [r["validation_accuracy_recalibrated"] for r in rows], "s--",
                color=colour, mfc="white", label="pruned, batch norm re-estimated (no training)")
        ax.plot(sparsity, [r["validation_accuracy_refitted"] for r in rows], "D-.", color="C9",
                label="kept weights refitted by least squares (no training)")
        ax.plot(sparsity, [r["validation_accuracy_fine_tuned"] for r in rows], "^-", lw=2,
                color=colour, label="fine-tuned, pruned gradually, with the dense teacher")
        tested = [(r["sparsity"], r["test_accuracy"]) for r in rows if r.get("test_accuracy")]
        if tested:
            ax.plot(*zip(*tested), "x", color="k", ms=7, label="its test accuracy (report)")
        ax.axhline(dense, color="k", ls="--", lw=0.8, label="unpruned (validation)")
        ax.axhspan(dense - 0.01, dense, color="C2", alpha=0.15, label="within 1 point")
        ax.set(xlabel="weights pruned overall (global threshold)",
               ylabel="validation accuracy")
        percent(ax, "x")
    # the zoom: 4 points below the unpruned model, further where a fine-tuned
    # model or its test accuracy lies lower
    lowest = min((r[k] for r in rows for k in ("validation_accuracy_fine_tuned",
                                               "test_accuracy") if r.get(k) is not None),
                 default=dense)
    fig, full, _ = zoom_panels("Fine-tuning recovers pruned accuracy", draw,
                                (min(dense - 0.04, lowest - 0.005), dense + 0.01))
    footnote(fig, settings_line(results))
    return save(fig, path, legend=full, ncol=3, bottom=0.16)


def plot_compression_tradeoff(part2, part3, path, structured=None):
    """Pruning vs Tucker-2 on the same model: validation accuracy against
    non-zero weights; with `structured` (a run of part2_structured.py), filters
    removed too. One colour per method; dotted: no training, solid: fine-tuned."""
    curve = part2["global"]
    sweep = sorted(part3.get("sweep", []), key=lambda r: r["k"])
    tuned = [r for r in sweep if r.get("validation_accuracy_fine_tuned") is not None]
    finetune = sorted(part2.get("finetune", []), key=lambda r: r["sparsity"])
    removed = sorted((structured or {}).get("finetuned", []), key=lambda r: r["params"])
    pruned, tucker, filters = (METHOD_COLOURS[m] for m in ("pruned", "tucker", "structured"))

    def draw(ax):
        ax.plot(curve["nonzero_params"], curve["validation_accuracy_recalibrated"], "o:",
                color=pruned, mfc="white", label="global pruning, batch norm re-estimated")
        for rows, x, y, style, colour, label in (
                (finetune, "nonzero_params", "validation_accuracy_fine_tuned", "o-", pruned,
                 "global pruning + fine-tuned"),
                (sweep, "params", "validation_accuracy_recalibrated", "s:", tucker,
                 "Tucker-2 k = 1..8, batch norm re-estimated"),
                (tuned, "params", "validation_accuracy_fine_tuned", "s-", tucker,
                 "Tucker-2 + fine-tuned"),
                (removed, "params", "validation_accuracy_fine_tuned", "^-", filters,
                 "filters removed + fine-tuned")):
            if rows:
                ax.plot([r[x] for r in rows], [r[y] for r in rows], style, color=colour,
                        mfc="white" if ":" in style else None, label=label)
        ax.axhline(part2["dense"]["validation_accuracy"], color="k", ls="--", lw=0.8,
                   label="original")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="non-zero weights (log scale)", ylabel="validation accuracy")
    dense = part2["dense"]["validation_accuracy"]
    fig, full, zoom = zoom_panels("Compression trade-off on one model", draw,
                                   (dense - 0.10, dense + 0.015))
    for r in tuned or sweep:  # k labels once, on the zoomed panel's best curve
        y = r.get("validation_accuracy_fine_tuned") or r["validation_accuracy_recalibrated"]
        zoom.annotate(f"k={r['k']}", (r["params"], y), fontsize=7, xytext=(-4, 6),
                      textcoords="offset points", ha="right", color=tucker)
    footnote(fig, settings_line(part2))
    return save(fig, path, legend=full, ncol=3, bottom=0.16)



def plot_structured(run, keras_timing, litert_timing, path, tucker=()):
    """Part 2, structured: test accuracy of each fine-tuned filter-removed
    model against its time relative to the original, in Keras (batch 256)
    and in LiteRT (float32, batch 1, 1 thread), both timings of one machine;
    `tucker`: (k, Keras time ratio, test accuracy) of Part 3's models timed
    on the same machine, drawn in the Keras panel."""
    if keras_timing["label"] != litert_timing["label"]:
        raise ValueError("the two timings are of different machines: "
                         f"{keras_timing['label']} and {litert_timing['label']}")
    rows = sorted((r for r in run["finetuned"] if r.get("test_accuracy") is not None),
                  key=lambda r: r["flops_reduction"])
    fig, (keras_ax, litert_ax) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    original = run["original"]["test_accuracy"]
    colour = METHOD_COLOURS["structured"]
    low = min(r["test_accuracy"] for r in rows) - 0.01  # filter removal's range
    shown = [t for t in tucker if t[2] >= low]
    for ax, block, title in ((keras_ax, keras_timing, "Keras/TensorFlow, batch 256"),
                             (litert_ax, litert_timing, "LiteRT float32, batch 1, 1 thread")):
        points = [(block["models"][f"-{100 * r['flops_reduction']:g}%"]["ratio"],
                   r["test_accuracy"], r) for r in rows
                  if f"-{100 * r['flops_reduction']:g}%" in block["models"]]
        ax.plot([p[0] for p in points], [p[1] for p in points], "^-", color=colour,
                label="filters removed + fine-tuned")
        for i, (x, y, r) in enumerate(points):  # neighbours' labels above and below
            ax.annotate(f"−{100 * r['flops_reduction']:g}% FLOPs", (x, y), fontsize=7,
                        xytext=(6, -10 if i % 2 else 3), textcoords="offset points",
                        color=colour)
        if ax is keras_ax and shown:
            ax.plot([t[1] for t in shown], [t[2] for t in shown], "o--",
                    color=METHOD_COLOURS["tucker"], label="Tucker-2 + fine-tuned (Part 3)")
            for k, x, y in shown:
                ax.annotate(f"k={k}", (x, y), fontsize=7, xytext=(-6, 0), ha="right",
                            va="center", textcoords="offset points",
                            color=METHOD_COLOURS["tucker"])
        ax.plot(1, original, "k*", ms=12, label="original")
        ax.axhline(original, color="k", ls=":", lw=0.8)
        ax.set(xlabel="time relative to the original (median of interleaved rounds)",
               title=title, xlim=(0, 1.1))
        ax.grid(alpha=0.3)
    keras_ax.set(ylabel="test accuracy", ylim=(low, original + 0.004))
    percent(keras_ax)
    fig.suptitle(f"Filters removed: accuracy against measured time on {keras_timing['label']}")
    footnote(fig, "".join(f"Tucker-2 k = {k} ({100 * y:.2f}%, Keras time {x:.3f}) is below the "
                           "axis; " for k, x, y in tucker if y < low) + settings_line(run))
    return save(fig, path, legend=keras_ax, ncol=3, bottom=0.12)


LOWEST = -5      # points: the published table's range, with room for ours


def plot_published(published, base, rows, timed, path):
    """Our models of one base beside published rows: accuracy change against
    each one's own base over the multiply-add ratio, and (ours only: none of
    them reports one) the LiteRT batch-1 speed-up measured on one machine.

    published : (method, base, pruned, MACs ratio) tuples
    base, rows, timed : `report.resnet56_rows`' output (rows of one machine)
    """
    fig, (acc_ax, speed_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (name, their_base, pruned, macs) in enumerate(published):
        acc_ax.plot(macs, 100 * (pruned - their_base), "x", color="0.35", ms=7,
                    label="published (official CIFAR-10)" if i == 0 else None)
        acc_ax.annotate(name.split(" (")[0], (macs, 100 * (pruned - their_base)), fontsize=7,
                        xytext=(-5, 2) if i % 2 else (5, -8), ha="right" if i % 2 else "left",
                        textcoords="offset points", color="0.35")
    legends = {**{f: m.legend for f, m in METHODS.items()},
               "original": "the base, deployed as it is",
               "scratch": "same architecture from scratch (Scratch-B)"}
    seen = set()
    for row in rows:
        if row["accuracy"] is None:
            continue
        colour = METHOD_COLOURS["structured" if row["family"] == "scratch" else row["family"]]
        hollow = row["family"] == "scratch"
        acc_ax.plot(row["macs"], 100 * (row["accuracy"] - base), "o", color=colour,
                    mfc="none" if hollow else colour,
                    label=None if row["family"] in seen else f"ours: {legends[row['family']]}")
        seen.add(row["family"])
        for precision, marker in (("float32", "o"), ("int8", "D")):
            if precision in row and not hollow:
                speed_ax.plot(row["macs"], 1 / row[precision], marker, color=colour,
                              mfc=colour if precision == "float32" else "none")
    acc_ax.axhline(0, color="k", ls=":", lw=0.8)
    # The axis holds the published rows' range and ours down to LOWEST points;
    # a model below it is named in the footnote.
    changes = ([100 * (r["accuracy"] - base) for r in rows if r["accuracy"] is not None]
               + [100 * (pruned - b) for _, b, pruned, _ in published] + [0])
    low = max(min(changes), LOWEST) - 0.5
    hidden = [f"{r['method']}: {100 * (r['accuracy'] - base):+.2f} points at {r['macs']:.1f}×"
              for r in rows if r["accuracy"] is not None and 100 * (r["accuracy"] - base) < low]
    acc_ax.set(xlabel="multiply-adds: base / model (×, log)",
               ylabel="test accuracy − its own base (points)",
               title=f"Accuracy (ours: base {100 * base:.2f}%, JPEG copy of CIFAR-10)",
               ylim=(low, max(changes) + 0.5))
    top = max([r["macs"] for r in rows] + [m for *_, m in published] + [1]) * 1.05
    speed_ax.plot([1, top], [1, top], "k--", lw=0.8, label="speed-up = multiply-add ratio")
    speed_ax.plot([], [], "ko", label="float32")
    speed_ax.plot([], [], "kD", mfc="none", label="int8")
    speed_ax.set(xlabel="multiply-adds: base / model (×, log)",
                 ylabel="LiteRT speed-up over the base's float32 (×, log)",
                 title=f"LiteRT, batch 1, 1 thread\non {timed}" if timed else
                 "LiteRT: not timed yet")
    speed_ax.legend(fontsize=8)
    speed_ax.set_yscale("log", base=2)
    for ax in (acc_ax, speed_ax):
        ax.set_xscale("log", base=2)
        for axis in [ax.xaxis] + ([ax.yaxis] if ax is speed_ax else []):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("ResNet-56 on CIFAR-10: ours beside the published rows")
    footnote(fig, (f"Below the axis: {'; '.join(hidden)}. " if hidden else "")
             + "Published rows: github.com/VainF/Torch-Pruning, reproduce/readme.md (official "
             "data, each against its own base); none reports latency. Ours: the JPEG copy of "
             "CIFAR-10, each against our base; time ratios from one run of interleaved rounds.")
    return save(fig, path, legend=acc_ax, ncol=3, bottom=0.16)
