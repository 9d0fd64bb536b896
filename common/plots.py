"""One function per figure. Each takes records (as stored in results/*.json) and a path."""

import matplotlib

matplotlib.use("Agg")  # files only; works without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CHANCE = 0.1  # ten balanced classes


def _finish(fig, ax, path, **legend):
    """Grid, legend and save: how every single-panel figure ends."""
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    return _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _training_curves(runs, title, path, log_loss=False):
    """Accuracy (left) and loss (right) per epoch; test solid, train dashed.

    runs : dict label -> list of epoch records (epoch, train_/test_accuracy, _loss)
    """
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, epochs) in enumerate(runs.items()):
        color = f"C{i}"
        x = [e["epoch"] for e in epochs]
        for split, style in (("test", "-"), ("train", "--")):
            acc_ax.plot(x, [e[f"{split}_accuracy"] for e in epochs], style,
                        color=color, label=f"{label}, {split}")
            loss_ax.plot(x, [e[f"{split}_loss"] for e in epochs], style,
                         color=color, label=f"{label}, {split}")
    acc_ax.axhline(CHANCE, color="grey", lw=0.8, ls=":", label="chance")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    loss_ax.set(xlabel="epoch", ylabel="categorical cross-entropy", title="Loss")
    if log_loss:
        loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_step4_baseline(experiments, path):
    """Step 4: the plain CNN's train and test accuracy and loss per epoch."""
    base = experiments["baseline"]
    lr = base["config"]["learning_rate"]
    return _training_curves({f"no pooling, lr {lr:g}": base["epochs"]},
                            "Step 4: plain CNN (no pooling), CIFAR-10", path)


def plot_step5_learning_rates(experiments, path):
    """Step 5: lr 0.1 and lr 1 fail to train; lr 0.001 shown for reference."""
    runs = {f"lr {experiments[name]['config']['learning_rate']:g}": experiments[name]["epochs"]
            for name in ("baseline", "lr0.1", "lr1") if name in experiments}
    return _training_curves(runs, "Step 5: Adam learning rate, plain CNN", path,
                            log_loss=True)


def plot_step6_maxpool(experiments, path):
    """Step 6: max pooling against the baseline."""
    runs = {"no pooling (step 4)": experiments["baseline"]["epochs"],
            "2x2 max pooling": experiments["maxpool"]["epochs"]}
    return _training_curves(runs, "Step 6: adding max pooling", path)


def plot_step7_augmentation(experiments, path):
    """Step 7: data augmentation on the pooled CNN, the un-augmented one for reference."""
    runs = {"flip + translate": experiments["augment"]["epochs"]}
    if "maxpool" in experiments:
        runs["no augmentation (step 6)"] = experiments["maxpool"]["epochs"]
    return _training_curves(runs, "Step 7: data augmentation, pooled CNN", path)


# figure file name -> (function, experiments it needs)
PART1_FIGURES = {
    "part1_step4_baseline.png": (plot_step4_baseline, ("baseline",)),
    "part1_step5_learning_rates.png": (plot_step5_learning_rates, ("lr0.1", "lr1")),
    "part1_step6_maxpool.png": (plot_step6_maxpool, ("baseline", "maxpool")),
    "part1_step7_augmentation.png": (plot_step7_augmentation, ("augment",)),
}


def plot_reconstruction_vs_rank(reconstruction, path):
    """Part 3: relative error of one layer's Tucker-2 approximation against rank."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    r1_fixed, r2_fixed = reconstruction["r1_fixed_64"], reconstruction["r2_fixed_64"]
    ax.plot(r1_fixed["r2"], r1_fixed["error"], "o-", label="R1 = 64, R2 varies")
    ax.plot(r2_fixed["r1"], r2_fixed["error"], "s-", label="R2 = 64, R1 varies")
    ax.set(xlabel="rank", ylabel="relative error  ||W - Ŵ|| / ||W||", ylim=(0, None),
           title=f"Tucker-2 reconstruction error, layer {reconstruction['layer']} "
                 f"{tuple(reconstruction['kernel_shape'])}")
    return _finish(fig, ax, path)


def _sweep_xy(sweep, key):
    rows = sorted(sweep, key=lambda r: r["k"])
    return [r["k"] for r in rows], [r[key] for r in rows], rows


def plot_accuracy_vs_k(results, path):
    """Part 3: test accuracy of the decomposed model against k (ranks = k/8 of the channels)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks, acc, rows = _sweep_xy(results["sweep"], "test_accuracy")
    ax.plot(ks, acc, "o-", label="decomposed")
    recalibrated = [(r["k"], r["test_accuracy_recalibrated"]) for r in rows
                    if r.get("test_accuracy_recalibrated") is not None]
    if recalibrated:
        ax.plot(*zip(*recalibrated), "s-", label="decomposed, batch norm re-estimated")
    tuned = [(r["k"], r["fine_tuned_test_accuracy"]) for r in rows
             if r.get("fine_tuned_test_accuracy") is not None]
    if tuned:
        epochs = max(r["fine_tune_epochs"] for r in rows)
        ax.plot(*zip(*tuned), "^-", label=f"decomposed + fine-tuned ({epochs} epochs)")
    ax.axhline(results["original"]["test_accuracy"], color="k", ls="--", label="original")
    ax.set(xlabel="k  (R1 = c·k/8, R2 = f·k/8)", ylabel="test accuracy",
           title="Accuracy after Tucker-2 decomposition", xticks=range(1, 9))
    return _finish(fig, ax, path)


def plot_forward_time_vs_k(results, path):
    """Part 3: forward-pass time over the test set against k: median, min-max bars."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    # Only the models timed in one run with the original (a row whose model
    # file was absent keeps the seconds of an earlier run).
    timed = [r for r in results["sweep"] if r["k"] in results["timing"]["timed"]]
    ks, times, rows = _sweep_xy(timed, "forward_seconds")
    median = [t["median"] for t in times]
    spread = [[t["median"] - t["min"] for t in times], [t["max"] - t["median"] for t in times]]
    ax.errorbar(ks, median, yerr=spread, fmt="o-", capsize=4, label="decomposed (median, min-max)")
    original = results["original"]["forward_seconds"]
    ax.axhline(original["median"], color="k", ls="--", label="original (median)")
    ax.axhspan(original["min"], original["max"], color="k", alpha=0.1)
    ax.set(xlabel="k  (R1 = c·k/8, R2 = f·k/8)", ylim=(0, None), xticks=range(1, 9),
           ylabel=f"seconds per pass over {results['timing']['images']} test images",
           title=f"Forward time (batch {results['timing']['batch_size']}, "
                 f"{results['timing']['repeats']} repeats)")
    return _finish(fig, ax, path)


def plot_layer_sensitivity(results, path):
    """Part 2: test accuracy against prune rate, one line per layer (only that layer pruned)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    layers = sorted(results["layer_sensitivity"].items(), key=lambda item: item[1]["index"])
    for i, (name, row) in enumerate(layers):
        rates = [100 * r for r in row["prune_rates"]]
        ax.plot(rates, row["test_accuracy"], "o-", ms=3, color=plt.cm.viridis(i / max(1, len(layers) - 1)),
                label=f"{row['index']}: {name} {tuple(row['shape'])}")
    ax.axhline(results["dense_test_accuracy"], color="k", ls="--", lw=0.8, label="unpruned")
    ax.axhline(CHANCE, color="grey", ls=":", lw=0.8, label="chance")
    ax.set(xlabel="weights of that layer pruned (%)", ylabel="test accuracy", ylim=(0, 1),
           title="Pruning one layer at a time, no retraining (depth order: 1 = input side)")
    return _finish(fig, ax, path, fontsize=7, loc="lower left")


def plot_global_vs_uniform(results, path):
    """Part 2: one global magnitude threshold vs the same rate in every layer."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for kind, marker, color in (("global", "o", "C0"), ("uniform", "s", "C1")):
        curve = results[kind]
        sparsity = [100 * s for s in curve["sparsity"]]
        label = "one global threshold" if kind == "global" else "same rate in every layer"
        ax.plot(sparsity, curve["test_accuracy"], marker + "-", color=color, label=label)
        if "test_accuracy_recalibrated" in curve:
            ax.plot(sparsity, curve["test_accuracy_recalibrated"], marker + "--", color=color,
                    mfc="white", label=f"{label}, batch norm re-estimated")
    ax.axhline(results["dense_test_accuracy"], color="k", ls="--", lw=0.8, label="unpruned")
    ax.set(xlabel="weights pruned overall (%)", ylabel="test accuracy", ylim=(0, 1),
           title="Global vs uniform magnitude pruning, no retraining")
    return _finish(fig, ax, path)


def plot_finetune(results, path):
    """Part 2: accuracy of globally pruned models before and after fine-tuning."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rows = results["finetune"]
    sparsity = [100 * r["sparsity"] for r in rows]
    ax.plot(sparsity, [r["test_accuracy_before"] for r in rows], "o-", label="pruned")
    if all("test_accuracy_recalibrated" in r for r in rows):
        ax.plot(sparsity, [r["test_accuracy_recalibrated"] for r in rows], "s-",
                label="pruned, batch norm re-estimated (no training)")
    if all("test_accuracy_refitted" in r for r in rows):
        ax.plot(sparsity, [r["test_accuracy_refitted"] for r in rows], "D-",
                label="kept weights refitted by least squares (no training)")
    distilled = " + distillation" if rows[0].get("distillation_weight") else ""
    masks = ", pruned gradually" if rows[0].get("gradual") else ", masks fixed"
    ax.plot(sparsity, [r["test_accuracy_after"] for r in rows], "^-",
            label=f"fine-tuned {rows[0]['epochs']} epochs{distilled}{masks}")
    dense = results["dense_test_accuracy"]
    ax.axhline(dense, color="k", ls="--", lw=0.8, label="unpruned")
    ax.axhspan(dense - 0.01, dense, color="k", alpha=0.08, label="within 1 point")
    ax.set(xlabel="weights pruned overall (%, global threshold)", ylabel="test accuracy",
           ylim=(0, 1), title="Fine-tuning recovers pruned accuracy")
    return _finish(fig, ax, path, loc="lower left")


def plot_compression_tradeoff(part2, part3, path):
    """Pruning vs Tucker-2 on the same model: test accuracy against non-zero weights."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = part2["global"]
    ax.plot(curve["nonzero_params"], curve["test_accuracy"], "o-", color="C0",
            label="global pruning")
    if "test_accuracy_recalibrated" in curve:
        ax.plot(curve["nonzero_params"], curve["test_accuracy_recalibrated"], "o:", color="C0",
                label="global pruning, batch norm re-estimated")
    if part2.get("finetune"):
        rows = part2["finetune"]
        ax.plot([r["nonzero_params"] for r in rows], [r["test_accuracy_after"] for r in rows],
                "o--", color="C0", mfc="white", label=f"global pruning + fine-tune ({rows[0]['epochs']} ep)")
    sweep = sorted(part3.get("sweep", []), key=lambda r: r["k"])
    if sweep:
        ax.plot([r["params"] for r in sweep], [r["test_accuracy"] for r in sweep], "s-",
                color="C1", label="Tucker-2, k = 1..8")
        for r in sweep:
            ax.annotate(f"k={r['k']}", (r["params"], r["test_accuracy"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
        if all(r.get("test_accuracy_recalibrated") is not None for r in sweep):
            ax.plot([r["params"] for r in sweep], [r["test_accuracy_recalibrated"] for r in sweep],
                    "s:", color="C1", label="Tucker-2, batch norm re-estimated")
        tuned = [r for r in sweep if r.get("fine_tuned_test_accuracy") is not None]
        if tuned:
            ax.plot([r["params"] for r in tuned], [r["fine_tuned_test_accuracy"] for r in tuned],
                    "s--", color="C1", mfc="white",
                    label=f"Tucker-2 + fine-tune ({tuned[0]['fine_tune_epochs']} ep)")
    ax.axhline(part2["dense_test_accuracy"], color="k", ls="--", lw=0.8, label="original")
    ax.set_xscale("log")
    ax.set(xlabel="non-zero weights (log scale)", ylabel="test accuracy", ylim=(0, 1),
           title="Compression trade-off on the reference model")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
