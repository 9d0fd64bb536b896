"""One function per figure. Each takes records (as stored in results/*.json) and a path."""

import matplotlib

matplotlib.use("Agg")  # files only; works without a display
import matplotlib.pyplot as plt  # noqa: E402

CHANCE = 0.1  # ten balanced classes


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
