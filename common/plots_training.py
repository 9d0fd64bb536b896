"""Part 1's figures: training curves of the study's steps 4-7."""

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from common.plots import CHANCE, MARKERS, dataset_name, footnote, percent, save


def _training_curves(runs, title, path, note, log_loss=False):
    """Accuracy (left) and loss (right) per epoch; test solid, train dashed; one
    colour and marker per run, markers of different runs on alternating
    epochs (so that runs on the same values, as lr 0.1 and lr 1 at chance,
    stay visible), the legend below both panels.

    runs : dict label -> list of epoch records (epoch, train_/test_accuracy, _loss)
    """
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    losses = []
    for i, (label, epochs) in enumerate(runs.items()):
        every = max(len(runs), len(epochs) // 8)
        style = dict(color=f"C{i}", marker=MARKERS[i], ms=5, lw=1.5, alpha=0.9,
                     markevery=(i % every, every))
        x = [e["epoch"] for e in epochs]
        for split, ls in (("test", "-"), ("train", "--")):
            acc_ax.plot(x, [e[f"{split}_accuracy"] for e in epochs], ls=ls,
                        label=f"{label}, {split}", **style)
            loss = [e[f"{split}_loss"] for e in epochs]
            loss_ax.plot(x, loss, ls=ls, **style)
            losses += loss
    acc_ax.axhline(CHANCE, color="grey", lw=0.8, ls=":", label="chance (10 classes)")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    percent(acc_ax)
    loss_ax.set(xlabel="epoch", ylabel="categorical cross-entropy", title="Loss")
    if log_loss:
        loss_ax.set_yscale("log")
    else:
        loss_ax.set_ylim(0, 1.05 * max(losses))
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    footnote(fig, note)
    return save(fig, path, legend=acc_ax, ncol=min(4, 2 * len(runs) + 1), bottom=0.17)


def _part1footnote(run, names):
    """Data, the experiments' epochs and batch size, train limit and seed."""
    experiments = run["experiments"]
    configs = [experiments[n]["config"] for n in names if n in experiments]
    parts = [dataset_name(run)]
    limit = configs[0].get("train_limit")
    parts.append(f"first {limit:,} training images" if limit else "all 50,000 training images")
    parts.append("epochs " + ", ".join(f"{c['epochs']}" for c in configs)
                 + f"; batch {configs[0]['batch_size']}; seed {configs[0]['seed']}")
    return "; ".join(parts)


def plot_step4_baseline(run, path):
    """Step 4: the plain CNN's train and test accuracy and loss per epoch."""
    base = run["experiments"]["baseline"]
    lr = base["config"]["learning_rate"]
    return _training_curves({f"no pooling, lr {lr:g}": base["epochs"]},
                            "Step 4: plain CNN (no pooling)", path,
                            _part1footnote(run, ["baseline"]))


def plot_step5_learning_rates(run, path):
    """Step 5: lr 0.1 and lr 1 fail to train; lr 0.001 shown for reference."""
    experiments = run["experiments"]
    names = [name for name in ("lr0.1", "lr1", "baseline") if name in experiments]
    runs = {f"lr {experiments[name]['config']['learning_rate']:g}": experiments[name]["epochs"]
            for name in names}
    return _training_curves(runs, "Step 5: Adam learning rate, plain CNN (lr 0.1 and 1 "
                            "both sit at chance)", path, _part1footnote(run, names),
                            log_loss=True)


def plot_step6_maxpool(run, path):
    """Step 6: max pooling against the baseline."""
    experiments = run["experiments"]
    runs = {"no pooling (step 4)": experiments["baseline"]["epochs"],
            "2x2 max pooling": experiments["maxpool"]["epochs"]}
    return _training_curves(runs, "Step 6: adding max pooling", path,
                            _part1footnote(run, ["baseline", "maxpool"]))


def plot_step7_augmentation(run, path):
    """Step 7: data augmentation on the pooled CNN, the un-augmented one for reference."""
    experiments = run["experiments"]
    runs = {"flip + translate": experiments["augment"]["epochs"]}
    if "maxpool" in experiments:
        runs["no augmentation (step 6)"] = experiments["maxpool"]["epochs"]
    return _training_curves(runs, "Step 7: data augmentation, pooled CNN", path,
                            _part1footnote(run, ["augment", "maxpool"]))


# figure file name -> (function, experiments it needs)
PART1_FIGURES = {
    "part1_step4_baseline.png": (plot_step4_baseline, ("baseline",)),
    "part1_step5_learning_rates.png": (plot_step5_learning_rates, ("lr0.1", "lr1")),
    "part1_step6_maxpool.png": (plot_step6_maxpool, ("baseline", "maxpool")),
    "part1_step7_augmentation.png": (plot_step7_augmentation, ("augment",)),
}
