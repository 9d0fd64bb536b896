"""One function per figure. Each takes records (as stored in results/*.json) and a path."""

import matplotlib

matplotlib.use("Agg")  # files only; works without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, PercentFormatter  # noqa: E402

CHANCE = 0.1  # ten balanced classes


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


MARKERS = "osD^v"


def dataset_name(run):
    """"CIFAR-10 (JPEG copy)" or "CIFAR-10", from a run's settings or the data
    source its records name (a Part 1 entry's meta)."""
    data = run.get("settings", {}).get("data") or run.get("meta", {}).get("data_source", "")
    return "CIFAR-10 (JPEG copy)" if "JPEG copy" in data else "CIFAR-10"


def _percent(ax, axis="y"):
    """Accuracy axes in percent (the records hold fractions)."""
    getattr(ax, f"{axis}axis").set_major_formatter(PercentFormatter(xmax=1, decimals=0))


def _training_curves(runs, title, path, log_loss=False, stacked=False):
    """Accuracy (left) and loss (right) per epoch; test solid, train dashed; one
    colour and marker per run, the legend below both panels.

    runs : dict label -> list of epoch records (epoch, train_/test_accuracy, _loss)
    stacked : draw earlier runs wider, so that a later run on the same values
        (lr 0.1 and lr 1 both sit at chance) leaves them visible
    """
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.6))
    for i, (label, epochs) in enumerate(runs.items()):
        width = 1.5 + 2.5 * (len(runs) - 1 - i) if stacked else 1.5
        style = dict(color=f"C{i}", marker=MARKERS[i], ms=4, lw=width,
                     markevery=max(1, len(epochs) // 10), alpha=0.9)
        x = [e["epoch"] for e in epochs]
        for split, ls in (("test", "-"), ("train", "--")):
            acc_ax.plot(x, [e[f"{split}_accuracy"] for e in epochs], ls=ls,
                        label=f"{label}, {split}", **style)
            loss_ax.plot(x, [e[f"{split}_loss"] for e in epochs], ls=ls, **style)
    acc_ax.axhline(CHANCE, color="grey", lw=0.8, ls=":", label="chance (10 classes)")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    _percent(acc_ax)
    loss_ax.set(xlabel="epoch", ylabel="categorical cross-entropy", title="Loss")
    if log_loss:
        loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save_below(fig, acc_ax, path, ncol=min(4, 2 * len(runs) + 1), bottom=0.1)


def plot_step4_baseline(experiments, path):
    """Step 4: the plain CNN's train and test accuracy and loss per epoch."""
    base = experiments["baseline"]
    lr = base["config"]["learning_rate"]
    return _training_curves({f"no pooling, lr {lr:g}": base["epochs"]},
                            f"Step 4: plain CNN (no pooling), {dataset_name(base)}", path)


def plot_step5_learning_rates(experiments, path):
    """Step 5: lr 0.1 and lr 1 fail to train; lr 0.001 shown for reference."""
    runs = {f"lr {experiments[name]['config']['learning_rate']:g}": experiments[name]["epochs"]
            for name in ("lr0.1", "lr1", "baseline") if name in experiments}
    return _training_curves(runs, "Step 5: Adam learning rate, plain CNN, "
                            f"{dataset_name(experiments['lr1'])}", path, log_loss=True,
                            stacked=True)


def plot_step6_maxpool(experiments, path):
    """Step 6: max pooling against the baseline."""
    runs = {"no pooling (step 4)": experiments["baseline"]["epochs"],
            "2x2 max pooling": experiments["maxpool"]["epochs"]}
    return _training_curves(runs, "Step 6: adding max pooling, "
                            f"{dataset_name(experiments['maxpool'])}", path)


def plot_step7_augmentation(experiments, path):
    """Step 7: data augmentation on the pooled CNN, the un-augmented one for reference."""
    runs = {"flip + translate": experiments["augment"]["epochs"]}
    if "maxpool" in experiments:
        runs["no augmentation (step 6)"] = experiments["maxpool"]["epochs"]
    return _training_curves(runs, "Step 7: data augmentation, pooled CNN, "
                            f"{dataset_name(experiments['augment'])}", path)


# figure file name -> (function, experiments it needs)
PART1_FIGURES = {
    "part1_step4_baseline.png": (plot_step4_baseline, ("baseline",)),
    "part1_step5_learning_rates.png": (plot_step5_learning_rates, ("lr0.1", "lr1")),
    "part1_step6_maxpool.png": (plot_step6_maxpool, ("baseline", "maxpool")),
    "part1_step7_augmentation.png": (plot_step7_augmentation, ("augment",)),
}


def _zoom_panels(title, draw, zoom_ylim, figsize=(12, 4.4)):
    """Two panels drawn by `draw(ax)`: the full accuracy range (left) and a zoom
    on `zoom_ylim` (right), where the differences that matter are. Returns the
    figure and the axes; the legend goes below both."""
    fig, (full, zoom) = plt.subplots(1, 2, figsize=figsize)
    for ax, ylim, name in ((full, (0, 1), "full range"), (zoom, zoom_ylim, "zoomed")):
        draw(ax)
        ax.set(ylim=ylim, title=name)
        _percent(ax)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    return fig, full, zoom


def _save_below(fig, ax, path, ncol=3, bottom=0.14):
    """Legend below the panels (off the data), then save."""
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    _percent(ax)
    ax.grid(alpha=0.3)
    return _save_below(fig, ax, path, ncol=2, bottom=0.1)


def _sweep_xy(sweep, key):
    rows = sorted(sweep, key=lambda r: r["k"])
    return [r["k"] for r in rows], [r[key] for r in rows], rows


def plot_accuracy_vs_k(results, path):
    """Part 3: test accuracy of the decomposed model against k (ranks = k/8 of the channels)."""
    ks, acc, rows = _sweep_xy(results["sweep"], "test_accuracy")

    def draw(ax):
        ax.plot(ks, acc, "o-", label="decomposed")
        recalibrated = [(r["k"], r["test_accuracy_recalibrated"]) for r in rows
                        if r.get("test_accuracy_recalibrated") is not None]
        if recalibrated:
            ax.plot(*zip(*recalibrated), "s--", label="decomposed, batch norm re-estimated")
        tuned = [(r["k"], r["fine_tuned_test_accuracy"]) for r in rows
                 if r.get("fine_tuned_test_accuracy") is not None]
        if tuned:
            epochs = max(r["fine_tune_epochs"] for r in rows)
            ax.plot(*zip(*tuned), "^-.", label=f"decomposed + fine-tuned ({epochs} epochs)")
        ax.axhline(results["original"]["test_accuracy"], color="k", ls=":", label="original")
        ax.set(xlabel="k  (R1 = c·k/8, R2 = f·k/8)", ylabel="test accuracy", xticks=range(1, 9))
    original = results["original"]["test_accuracy"]
    fig, full, _ = _zoom_panels(f"Accuracy after Tucker-2 decomposition, {dataset_name(results)}",
                                draw, (original - 0.12, original + 0.02))
    return _save_below(fig, full, path, ncol=4, bottom=0.1)


def plot_forward_time_vs_k(results, path):
    """Part 3: forward-pass time over the test set against k: median, min-max bars."""
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    # Only the models timed in one run with the original (a row whose model
    # file was absent keeps the seconds of an earlier run).
    timed = [r for r in results["sweep"] if r["k"] in results["timing"]["timed"]]
    ks, times, rows = _sweep_xy(timed, "forward_seconds")
    median = [t["median"] for t in times]
    spread = [[t["median"] - t["min"] for t in times], [t["max"] - t["median"] for t in times]]
    ax.errorbar(ks, median, yerr=spread, fmt="o-", capsize=4, label="decomposed (median, min-max)")
    original = results["original"]["forward_seconds"]
    ax.axhline(original["median"], color="k", ls="--", label="original (median)")
    ax.axhspan(original["min"], original["max"], color="k", alpha=0.1, label="original (min-max)")
    ax.set(xlabel="k  (R1 = c·k/8, R2 = f·k/8)", ylim=(0, None), xticks=range(1, 9),
           ylabel=f"seconds per pass over {results['timing']['images']} test images",
           title=f"Forward time (batch {results['timing']['batch_size']}, "
                 f"{results['timing']['repeats']} repeats), {dataset_name(results)}")
    ax.grid(alpha=0.3)
    return _save_below(fig, ax, path, ncol=3, bottom=0.1)


def plot_layer_sensitivity(results, path):
    """Part 2: test accuracy against prune rate, one line per layer (only that layer pruned)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    layers = sorted(results["layer_sensitivity"].items(), key=lambda item: item[1]["index"])
    for i, (name, row) in enumerate(layers):
        ax.plot(row["prune_rates"], row["test_accuracy"], ms=4, color=plt.cm.tab10(i % 10),
                marker="osD^v<>ph"[i % 9], ls=("-", "--", "-.", ":")[i % 4],
                label=f"{row['index']}: {name} {tuple(row['shape'])}")
    ax.axhline(results["dense_test_accuracy"], color="k", ls="--", lw=0.8, label="unpruned")
    ax.axhline(CHANCE, color="grey", ls=":", lw=0.8, label="chance")
    ax.set(xlabel="weights of that layer pruned", ylabel="test accuracy", ylim=(0, 1),
           title="Pruning one layer at a time, no retraining (1 = input side), "
                 f"{dataset_name(results)}")
    _percent(ax)
    _percent(ax, "x")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def plot_global_vs_uniform(results, path):
    """Part 2: one global magnitude threshold vs the same rate in every layer."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for kind, marker, color in (("global", "o", "C0"), ("uniform", "s", "C1")):
        curve = results[kind]
        label = "one global threshold" if kind == "global" else "same rate in every layer"
        ax.plot(curve["sparsity"], curve["test_accuracy"], marker + "-", color=color, label=label)
        ax.plot(curve["sparsity"], curve["test_accuracy_recalibrated"], marker + "--",
                color=color, mfc="white", label=f"{label}, batch norm re-estimated")
    ax.axhline(results["dense_test_accuracy"], color="k", ls=":", lw=0.8, label="unpruned")
    ax.set(xlabel="weights pruned overall", ylabel="test accuracy", ylim=(0, 1),
           title=f"Global vs uniform magnitude pruning, no retraining\n{dataset_name(results)}")
    _percent(ax)
    _percent(ax, "x")
    ax.grid(alpha=0.3)
    return _save_below(fig, ax, path, ncol=2, bottom=0.16)


def plot_finetune(results, path):
    """Part 2: accuracy of globally pruned models before and after fine-tuning."""
    rows = results["finetune"]
    sparsity = [r["sparsity"] for r in rows]
    dense = results["dense_test_accuracy"]
    distilled = " + distillation" if rows[0].get("distillation_weight") else ""
    masks = ", pruned gradually" if rows[0].get("gradual") else ", masks fixed"

    def draw(ax):
        ax.plot(sparsity, [r["test_accuracy_before"] for r in rows], "o-", label="pruned")
        ax.plot(sparsity, [r["test_accuracy_recalibrated"] for r in rows], "s--",
                label="pruned, batch norm re-estimated (no training)")
        ax.plot(sparsity, [r["test_accuracy_refitted"] for r in rows], "D:",
                label="kept weights refitted by least squares (no training)")
        ax.plot(sparsity, [r["test_accuracy_after"] for r in rows], "^-", lw=2,
                label=f"fine-tuned {rows[0]['epochs']} epochs{distilled}{masks}")
        ax.axhline(dense, color="k", ls="--", lw=0.8, label="unpruned")
        ax.axhspan(dense - 0.01, dense, color="C2", alpha=0.15, label="within 1 point")
        ax.set(xlabel="weights pruned overall (global threshold)", ylabel="test accuracy")
        _percent(ax, "x")
    fig, full, _ = _zoom_panels(f"Fine-tuning recovers pruned accuracy, {dataset_name(results)}",
                                draw, (dense - 0.04, dense + 0.01))
    return _save_below(fig, full, path, ncol=3, bottom=0.14)


def plot_compression_tradeoff(part2, part3, path, structured=None):
    """Pruning vs Tucker-2 on the same model: test accuracy against non-zero
    weights; with `structured` (a run of part2_structured.py), filters removed too."""
    curve = part2["global"]
    sweep = sorted(part3.get("sweep", []), key=lambda r: r["k"])
    tuned = [r for r in sweep if r.get("fine_tuned_test_accuracy") is not None]
    finetune = part2.get("finetune", [])

    def draw(ax):
        ax.plot(curve["nonzero_params"], curve["test_accuracy"], "o-", color="C0",
                label="global pruning")
        ax.plot(curve["nonzero_params"], curve["test_accuracy_recalibrated"], "o:", color="C0",
                label="global pruning, batch norm re-estimated")
        if finetune:
            ax.plot([r["nonzero_params"] for r in finetune],
                    [r["test_accuracy_after"] for r in finetune], "o--", color="C0", mfc="white",
                    label=f"global pruning + fine-tune ({finetune[0]['epochs']} ep)")
        if sweep:
            ax.plot([r["params"] for r in sweep], [r["test_accuracy"] for r in sweep], "s-",
                    color="C1", label="Tucker-2, k = 1..8")
            ax.plot([r["params"] for r in sweep], [r["test_accuracy_recalibrated"] for r in sweep],
                    "s:", color="C1", label="Tucker-2, batch norm re-estimated")
        if tuned:
            ax.plot([r["params"] for r in tuned], [r["fine_tuned_test_accuracy"] for r in tuned],
                    "s--", color="C1", mfc="white",
                    label=f"Tucker-2 + fine-tune ({tuned[0]['fine_tune_epochs']} ep)")
        removed = sorted((structured or {}).get("finetuned", []), key=lambda r: r["params"])
        if removed:
            ax.plot([r["params"] for r in removed], [r["test_accuracy_after"] for r in removed],
                    "^--", color="C2", mfc="white",
                    label=f"filters removed + fine-tune ({structured['settings']['fine_tune']['epochs']} ep)")
        ax.axhline(part2["dense_test_accuracy"], color="k", ls="--", lw=0.8, label="original")
        ax.set_xscale("log")
        ax.set(xlabel="non-zero weights (log scale)", ylabel="test accuracy")
    fig, full, zoom = _zoom_panels(
        f"Compression trade-off on one model, {dataset_name(part2)}", draw,
        (part2["dense_test_accuracy"] - 0.12, part2["dense_test_accuracy"] + 0.015))
    for r in tuned or sweep:  # k labels once, on the zoomed panel's best curve
        y = r.get("fine_tuned_test_accuracy") or r["test_accuracy"]
        zoom.annotate(f"k={r['k']}", (r["params"], y), fontsize=7, xytext=(-4, 6),
                      textcoords="offset points", ha="right")
    return _save_below(fig, full, path, ncol=4, bottom=0.14)


def plot_deployment(results, path):
    """Part 4: test accuracy in LiteRT against latency (batch 1, 1 thread) and
    against gzipped bytes, every model and precision; the float32 original
    marked by a star and dotted lines. Colour: model family; marker: precision
    (hollow: sparse-encoded); the label: k, the share of weights pruned or of
    FLOPs removed."""
    rows = results["models"]
    colours = {"original": "k", "tucker": "C1", "pruned": "C0", "structured": "C2"}
    markers = {"float32": "o", "dynamic_int8": "s", "int8": "D"}
    fig, (time_ax, size_ax) = plt.subplots(1, 2, figsize=(13, 5.4), sharey=True)
    panels = ((time_ax, lambda r: 1e3 * r["latency"]["1"]["median"] if "latency" in r else None,
               "latency per image, batch 1, 1 thread (ms, log scale)"),
              (size_ax, lambda r: r["gzip_bytes"] / 1e6, "file size, gzipped (MB, log scale)"))
    for ax, x_of, xlabel in panels:
        for row in rows:
            x = x_of(row)
            if x is None:
                continue
            colour = colours[row["family"]]
            original = row["family"] == "original" and row["precision"] == "float32"
            ax.plot(x, row["test_accuracy"], "*" if original else markers[row["precision"]],
                    ms=14 if original else 6, color=colour,
                    mfc="white" if row["sparse"] else colour)
            label = {"tucker": f"k{row.get('k')}",
                     "pruned": f"{100 * row.get('sparsity', 0):g}%",
                     "structured": f"-{100 * row.get('flops_reduction', 0):g}%"
                     }.get(row["family"], "")
            if label:
                ax.annotate(label, (x, row["test_accuracy"]), fontsize=6, color=colour,
                            xytext=(3, 3), textcoords="offset points")
            if original:
                ax.axvline(x, color="k", ls=":", lw=0.8)
                ax.axhline(row["test_accuracy"], color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3, which="both")
    time_ax.set(ylabel="test accuracy (LiteRT)")
    time_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    families = {row["family"] for row in rows}
    handles = [plt.Line2D([], [], ls="", marker="*", ms=12, color="k",
                          label="original, float32 (dotted lines)")]
    handles += [plt.Line2D([], [], ls="", marker="o", color=colours[family], label=name)
                for family, name in (("original", "original"),
                                     ("tucker", "Tucker-2 (k), fine-tuned"),
                                     ("pruned", "weights pruned (share), fine-tuned"),
                                     ("structured", "filters removed (share of FLOPs), "
                                                    "fine-tuned")) if family in families]
    handles += [plt.Line2D([], [], ls="", marker=m, color="grey", label=p)
                for p, m in markers.items()]
    if any(row["sparse"] for row in rows):
        handles.append(plt.Line2D([], [], ls="", marker="o", color="grey", mfc="white",
                                  label="sparse-encoded (hollow)"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    timing = results.get("timing", {})
    fig.suptitle(f"Deployed in LiteRT (XNNPACK, {timing.get('images', '?')} images x "
                 f"{timing.get('repeats', '?')} interleaved rounds), {dataset_name(results)}")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_structured(run, part3_runs, part4_runs, path):
    """Part 2, structured: test accuracy against measured time, in Keras (batch
    256) and in LiteRT (batch 1, 1 thread), for filters removed and
    fine-tuned, beside Tucker-2 k = 1..8 (Part 3's Keras times; Part 4's LiteRT
    float32 times) and unstructured pruning (Part 4's LiteRT times; in Keras
    a pruned model runs at dense speed)."""
    rows = sorted((r for r in run["finetuned"] if "keras_time_ratio" in r),
                  key=lambda r: r["flops_reduction"])
    fig, (keras_ax, litert_ax) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    dense = run["dense_test_accuracy"]
    tucker = sorted((r for p3 in part3_runs[:1] for r in p3["sweep"]
                     if r.get("fine_tuned_test_accuracy") and r.get("time_ratio")),
                    key=lambda r: r["k"])
    litert = [r for p4 in part4_runs[:1] for r in p4.get("models", [])
              if r["precision"] == "float32" and not r["sparse"] and "time_ratio" in r]
    for ax, x_of, title in ((keras_ax, lambda r: r["keras_time_ratio"],
                             "Keras/TensorFlow, batch 256"),
                            (litert_ax, lambda r: r["litert_time_ratio"]["1"],
                             "LiteRT float32, batch 1, 1 thread")):
        ax.plot([x_of(r) for r in rows], [r["test_accuracy_after"] for r in rows], "o-",
                color="C2", label="filters removed + fine-tuned")
        for r in rows:
            ax.annotate(f"-{r['flops_reduction']:.0%} FLOPs", (x_of(r), r["test_accuracy_after"]),
                        fontsize=7, xytext=(4, -10), textcoords="offset points", color="C2")
        ax.plot(1, dense, "k*", ms=12, label="original")
        ax.axhline(dense, color="k", ls=":", lw=0.8)
        ax.set(xlabel="time relative to the original (median of interleaved rounds)", title=title)
        ax.grid(alpha=0.3)
    if tucker:
        keras_ax.plot([r["time_ratio"] for r in tucker],
                      [r["fine_tuned_test_accuracy"] for r in tucker], "s--", color="C1",
                      label="Tucker-2 k = 1..8 + fine-tuned (Part 3's timing)")
    tucker_lite = sorted((r for r in litert if r["family"] == "tucker"), key=lambda r: r["k"])
    if tucker_lite:
        litert_ax.plot([r["time_ratio"]["1"] for r in tucker_lite],
                       [r["test_accuracy"] for r in tucker_lite], "s--", color="C1",
                       label="Tucker-2 + fine-tuned (Part 4's timing)")
    pruned = sorted((r for r in litert if r["family"] == "pruned"), key=lambda r: r["sparsity"])
    if pruned:
        litert_ax.plot([r["time_ratio"]["1"] for r in pruned], [r["test_accuracy"] for r in pruned],
                       "D:", color="C0", label="weights pruned + fine-tuned (Part 4's timing)")
    for ax, rows_k in ((keras_ax, tucker), (litert_ax, tucker_lite)):
        for r in rows_k:
            y = r.get("fine_tuned_test_accuracy") or r["test_accuracy"]
            x = r["time_ratio"]["1"] if isinstance(r["time_ratio"], dict) else r["time_ratio"]
            ax.annotate(f"k={r['k']}", (x, y), fontsize=7, xytext=(3, 4),
                        textcoords="offset points", color="C1")
    keras_ax.set(ylabel="test accuracy")
    _percent(keras_ax)
    handles, labels = [], []
    for ax in (keras_ax, litert_ax):
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Accuracy against measured time, {dataset_name(run)}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
