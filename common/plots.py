"""One function per figure. Each takes records (as stored in results/*.json) and a path."""

import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; works without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, PercentFormatter  # noqa: E402

from common.machine import label as machine_label  # noqa: E402

CHANCE = 0.1  # ten balanced classes


def _save(fig, path):
    """Laid out above the footnote, if any, and saved."""
    fig.tight_layout(rect=(0, _footnote_height(fig), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


MARKERS = "osD^v"
# One colour per method in every figure.
METHOD_COLOURS = {"original": "k", "pruned": "C0", "tucker": "C1", "structured": "C2",
                  "search": "C3"}


def dataset_name(run):
    """"CIFAR-10 (JPEG copy)" or "CIFAR-10", from a run's settings or the data
    source its records name (a Part 1 entry's meta)."""
    data = run.get("settings", {}).get("data") or run.get("meta", {}).get("data_source", "")
    return "CIFAR-10 (JPEG copy)" if "JPEG copy" in data else "CIFAR-10"


class _PercentTicks(PercentFormatter):
    """Fractions in percent with as many decimals as the ticks' spacing needs
    (steps of 0.5 points: 87.5%, 88.0%, ...; of 2 points: 86%, 88%, ...)."""

    def __init__(self):
        super().__init__(xmax=1)

    def format_ticks(self, values):
        steps = [100 * (b - a) for a, b in zip(values, values[1:])] or [1]
        step = min(steps)
        self.decimals = next((d for d in range(4) if abs(step * 10 ** d
                                                         - round(step * 10 ** d)) < 1e-6), 4)
        return super().format_ticks(values)


def _percent(ax, axis="y"):
    """Accuracy axes in percent (the records hold fractions)."""
    getattr(ax, f"{axis}axis").set_major_formatter(_PercentTicks())


def _training_curves(runs, title, path, footnote, log_loss=False):
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
    _percent(acc_ax)
    loss_ax.set(xlabel="epoch", ylabel="categorical cross-entropy", title="Loss")
    if log_loss:
        loss_ax.set_yscale("log")
    else:
        loss_ax.set_ylim(0, 1.05 * max(losses))
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _footnote(fig, footnote)
    return _save_below(fig, acc_ax, path, ncol=min(4, 2 * len(runs) + 1), bottom=0.17)


def _part1_footnote(run, names):
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
                            _part1_footnote(run, ["baseline"]))


def plot_step5_learning_rates(run, path):
    """Step 5: lr 0.1 and lr 1 fail to train; lr 0.001 shown for reference."""
    experiments = run["experiments"]
    names = [name for name in ("lr0.1", "lr1", "baseline") if name in experiments]
    runs = {f"lr {experiments[name]['config']['learning_rate']:g}": experiments[name]["epochs"]
            for name in names}
    return _training_curves(runs, "Step 5: Adam learning rate, plain CNN (lr 0.1 and 1 "
                            "both sit at chance)", path, _part1_footnote(run, names),
                            log_loss=True)


def plot_step6_maxpool(run, path):
    """Step 6: max pooling against the baseline."""
    experiments = run["experiments"]
    runs = {"no pooling (step 4)": experiments["baseline"]["epochs"],
            "2x2 max pooling": experiments["maxpool"]["epochs"]}
    return _training_curves(runs, "Step 6: adding max pooling", path,
                            _part1_footnote(run, ["baseline", "maxpool"]))


def plot_step7_augmentation(run, path):
    """Step 7: data augmentation on the pooled CNN, the un-augmented one for reference."""
    experiments = run["experiments"]
    runs = {"flip + translate": experiments["augment"]["epochs"]}
    if "maxpool" in experiments:
        runs["no augmentation (step 6)"] = experiments["maxpool"]["epochs"]
    return _training_curves(runs, "Step 7: data augmentation, pooled CNN", path,
                            _part1_footnote(run, ["augment", "maxpool"]))


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


def _footnote_height(fig):
    """The height of the figure's footnote (a fraction of the figure), 0 if none."""
    notes = [t for t in fig.texts if t.get_gid() == "footnote"]
    if not notes:
        return 0.0
    fig.canvas.draw()
    return notes[0].get_window_extent().transformed(fig.transFigure.inverted()).height + 0.01


def _save_below(fig, ax, path, ncol=3, bottom=0.14):
    """Legend below the panels (off the data), above the footnote line, then save."""
    height = _footnote_height(fig)
    notes = [t for t in fig.texts if t.get_gid() == "footnote"]
    lines = notes[0].get_text().count("\n") + 1 if notes else 1
    extra = height * (lines - 1) / lines  # the footnote's lines beyond its first
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 0.025 + extra))
    fig.tight_layout(rect=(0, bottom + extra, 1, 1))
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


def _settings_line(run):
    """The footnote of a figure: data, train limit, seed, fine-tuning."""
    settings = run.get("settings", {})
    parts = [dataset_name(run)]
    if settings.get("train_limit"):
        parts.append(f"first {settings['train_limit']:,} training images")
    if settings.get("validation"):
        parts.append(f"validation {settings['validation']}")
    recipe = settings.get("fine_tune")
    if recipe:
        parts.append(f"fine-tuned {recipe['epochs']} epochs ({recipe['precision']})")
    parts.append(f"seed {settings.get('seed', 0)}")
    return "; ".join(parts)


def _footnote(fig, text):
    """Settings and machine in small print along the bottom, wrapped to the
    figure's width."""
    fig.text(0.01, 0.005, textwrap.fill(text, int(19 * fig.get_figwidth())), fontsize=7,
             color="0.35", ha="left", va="bottom", gid="footnote")


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
    fig, full, _ = _zoom_panels("Accuracy after Tucker-2 decomposition", draw,
                                (original - 0.12, original + 0.02))
    _footnote(fig, _settings_line(results))
    return _save_below(fig, full, path, ncol=3, bottom=0.14)


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
    _footnote(fig, f"{timing['label']}, {timing['machine']['logical_cores']} threads; "
                   f"{_settings_line(results)}")
    return _save_below(fig, ax, path, ncol=3, bottom=0.14)


def plot_layer_sensitivity(results, path):
    """Part 2: validation accuracy against prune rate, one line per layer (only
    that layer pruned)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    layers = sorted(results["layer_sensitivity"].items(), key=lambda item: item[1]["index"])
    for i, (name, row) in enumerate(layers):
        ax.plot(row["prune_rates"], row["validation_accuracy"], ms=4, color=plt.cm.tab10(i % 10),
                marker="osD^v<>ph"[i % 9], ls=("-", "--", "-.", ":")[i % 4],
                label=f"{row['index']}: {name} {tuple(row['shape'])}")
    ax.axhline(results["dense"]["validation_accuracy"], color="k", ls="--", lw=0.8,
               label="unpruned")
    ax.axhline(CHANCE, color="grey", ls=":", lw=0.8, label="chance")
    ax.set(xlabel="weights of that layer pruned", ylabel="validation accuracy", ylim=(0, 1),
           title="Pruning one layer at a time, no retraining (1 = input side)")
    _percent(ax)
    _percent(ax, "x")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _footnote(fig, _settings_line(results))
    return _save(fig, path)


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
    _percent(ax)
    _percent(ax, "x")
    ax.grid(alpha=0.3)
    _footnote(fig, _settings_line(results))
    return _save_below(fig, ax, path, ncol=2, bottom=0.18)


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
        _percent(ax, "x")
    fig, full, _ = _zoom_panels("Fine-tuning recovers pruned accuracy", draw,
                                (dense - 0.04, dense + 0.01))
    _footnote(fig, _settings_line(results))
    return _save_below(fig, full, path, ncol=3, bottom=0.16)


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
        if finetune:
            ax.plot([r["nonzero_params"] for r in finetune],
                    [r["validation_accuracy_fine_tuned"] for r in finetune], "o-", color=pruned,
                    label="global pruning + fine-tuned")
        if sweep:
            ax.plot([r["params"] for r in sweep],
                    [r["validation_accuracy_recalibrated"] for r in sweep], "s:", color=tucker,
                    mfc="white", label="Tucker-2 k = 1..8, batch norm re-estimated")
        if tuned:
            ax.plot([r["params"] for r in tuned],
                    [r["validation_accuracy_fine_tuned"] for r in tuned], "s-", color=tucker,
                    label="Tucker-2 + fine-tuned")
        if removed:
            ax.plot([r["params"] for r in removed],
                    [r["validation_accuracy_fine_tuned"] for r in removed], "^-", color=filters,
                    label="filters removed + fine-tuned")
        ax.axhline(part2["dense"]["validation_accuracy"], color="k", ls="--", lw=0.8,
                   label="original")
        ax.set_xscale("log")
        ax.set(xlabel="non-zero weights (log scale)", ylabel="validation accuracy")
    dense = part2["dense"]["validation_accuracy"]
    fig, full, zoom = _zoom_panels("Compression trade-off on one model", draw,
                                   (dense - 0.10, dense + 0.015))
    for r in tuned or sweep:  # k labels once, on the zoomed panel's best curve
        y = r.get("validation_accuracy_fine_tuned") or r["validation_accuracy_recalibrated"]
        zoom.annotate(f"k={r['k']}", (r["params"], y), fontsize=7, xytext=(-4, 6),
                      textcoords="offset points", ha="right", color=tucker)
    _footnote(fig, _settings_line(part2))
    return _save_below(fig, full, path, ncol=3, bottom=0.16)


FAMILY_NAMES = {"original": "original", "tucker": "Tucker-2 (k), fine-tuned",
                "pruned": "weights pruned (share), fine-tuned",
                "structured": "filters removed (share of FLOPs), fine-tuned",
                "search": "searched for a latency budget"}
PRECISION_MARKERS = {"float32": "o", "dynamic_int8": "s", "int8": "D"}


def _point_label(row):
    return {"tucker": f"k{row.get('k')}", "pruned": f"{100 * row.get('sparsity', 0):g}%",
            "structured": f"−{100 * row.get('flops_reduction', 0):g}%",
            "search": f"≤{row.get('budget', 0):g}"}.get(row["family"], "")


def plot_deployment(results, path):
    """Part 4: test accuracy in LiteRT against latency (batch 1, 1 thread) and
    against gzipped bytes, every model and precision of one run (one machine).
    Colour: method; marker: precision; the points of one method and precision
    joined; the float32 original a star. Dynamic-range int8 and sparse-encoded
    flatbuffers are left to the table (they sit on their float32 / int8 twins)."""
    rows = [r for r in results["models"] if "latency" in r
            and r["precision"] in ("float32", "int8") and not r["sparse"]]
    settings = results["settings"]
    fig, (time_ax, size_ax) = plt.subplots(1, 2, figsize=(14, 6.4), sharey=True)
    panels = ((time_ax, lambda r: 1e3 * r["latency"]["1"]["median"],
               "latency per image, batch 1, 1 thread (ms, log scale)"),
              (size_ax, lambda r: r["gzip_bytes"] / 1e6, "file size, gzipped (MB, log scale)"))
    groups = {}
    for row in rows:
        groups.setdefault((row["family"], row["precision"], row["sparse"]), []).append(row)
    for ax, x_of, xlabel in panels:
        for (family, precision, sparse), members in groups.items():
            colour = METHOD_COLOURS[family]
            members = sorted(members, key=x_of)
            star = family == "original" and precision == "float32"
            ax.plot([x_of(r) for r in members], [r["test_accuracy"] for r in members],
                    ("*" if star else PRECISION_MARKERS[precision]) + ("" if star else "-"),
                    ms=15 if star else 6, lw=0.8, color=colour,
                    mfc="white" if sparse else colour, zorder=3 if star else 2)
            if ax is time_ax and precision == "int8" and not sparse:
                for i, row in enumerate(members):  # labels on one series, alternating sides
                    label = _point_label(row)
                    if label:
                        ax.annotate(label, (x_of(row), row["test_accuracy"]), fontsize=7,
                                    color=colour, xytext=(4, 5 if i % 2 else -10),
                                    textcoords="offset points")
            if star:
                ax.axvline(x_of(members[0]), color="k", ls=":", lw=0.8)
                ax.axhline(members[0]["test_accuracy"], color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        xs = [x_of(r) for r in rows]
        lo, hi = min(xs) / 1.15, max(xs) * 1.15
        ax.set_xticks([t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20) if lo <= t <= hi])
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3, which="both")
    time_ax.set(ylabel="test accuracy (LiteRT)")
    time_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    families = {row["family"] for row in rows}
    handles = [plt.Line2D([], [], ls="", marker="*", ms=12, color="k",
                          label="original, float32 (dotted lines)")]
    handles += [plt.Line2D([], [], ls="-", marker="o", color=METHOD_COLOURS[family],
                           label=name) for family, name in FAMILY_NAMES.items()
                if family in families and family != "original"]
    handles += [plt.Line2D([], [], ls="", marker=PRECISION_MARKERS[p], color="grey", label=p)
                for p in ("float32", "int8")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.035))
    timing = settings["timing"]
    fig.suptitle(f"Deployed in LiteRT on {machine_label(settings['machine'])} (XNNPACK; labels on "
                 "the int8 points)")
    _footnote(fig, f"{timing['images']} validation images x {timing['repeats']} interleaved "
                   f"rounds per flatbuffer; accuracy on all test images; dynamic-range int8 "
                   f"and sparse-encoded: docs/part4.md; "
                   f"{_settings_line(results)}")
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    _percent(keras_ax)
    fig.suptitle(f"Filters removed: accuracy against measured time on {keras_timing['label']}")
    _footnote(fig, "".join(f"Tucker-2 k = {k} ({100 * y:.2f}%, time {x:.3f}) is below the "
                           "axis; " for k, x, y in tucker if y < low) + _settings_line(run))
    return _save_below(fig, keras_ax, path, ncol=3, bottom=0.12)


def plot_budget_front(run, part4, path):
    """Part 5: test accuracy against measured latency (LiteRT, batch 1, 1
    thread, as a share of the float32 reference's) of the searched front and
    of every single method, one machine. With `part4` (a Part 4 run of the same
    reference on the same machine) every point comes from its one timing run,
    the searched models included; without, the search's own timing alone."""
    fig, ax = plt.subplots(figsize=(9, 5.6))
    front = sorted((r for r in run["front"] if "latency" in r), key=lambda r: r["budget"])
    part4_rows = [r for r in (part4 or {}).get("models", []) if "latency" in r
                  and not r["sparse"] and r["precision"] in ("float32", "int8")]
    searched = [r for r in part4_rows if r["family"] == "search"
                and r["precision"] == run["front"][0]["precision"]]
    if searched:
        points = sorted(((r["latency"]["1"]["ratio"], r["test_accuracy"], f"≤{r['budget']:g}")
                         for r in searched))
        source = "all points: Part 4's one interleaved timing run"
    else:
        points = [(r["latency"]["ratio"], r["test_accuracy"], f"≤{r['budget']:g}")
                  for r in front]
        source = "the search's own timing run (run part4_deploy.py for the single methods)"
    colour = METHOD_COLOURS["search"]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=colour, lw=2, ms=7,
            label=f"searched per layer ({run['front'][0]['precision']}), fine-tuned")
    for i, (x, y, text) in enumerate(points):
        ax.annotate(text, (x, y), fontsize=7, color=colour, xytext=(4, 6 if i % 2 else -11),
                    textcoords="offset points")
    for family in ("tucker", "structured", "pruned"):
        for precision, ls, mfc in (("float32", ":", "white"), ("int8", "--", None)):
            rows = sorted((r for r in part4_rows if r["family"] == family
                           and r["precision"] == precision), key=lambda r: r["latency"]["1"]["ratio"])
            if not rows:
                continue
            ax.plot([r["latency"]["1"]["ratio"] for r in rows],
                    [r["test_accuracy"] for r in rows], PRECISION_MARKERS[precision] + ls,
                    color=METHOD_COLOURS[family], mfc=mfc or METHOD_COLOURS[family], ms=5,
                    label=f"{FAMILY_NAMES[family]}, {precision}")
            for r in rows:
                ax.annotate(_point_label(r), (r["latency"]["1"]["ratio"], r["test_accuracy"]),
                            fontsize=6, color=METHOD_COLOURS[family], xytext=(3, -9),
                            textcoords="offset points")
    originals = {r["precision"]: r for r in part4_rows if r["family"] == "original"}
    if originals:
        base = originals["float32"]["test_accuracy"]
        for precision, r in originals.items():
            ax.plot(r["latency"]["1"]["ratio"], r["test_accuracy"],
                    "*" if precision == "float32" else "P", ms=13 if precision == "float32"
                    else 9, color="k", ls="", label=f"original, {precision}")
        ax.axhspan(base - 0.01, base, color="C2", alpha=0.12, label="within 1 point")
        ax.axhspan(base - 0.015, base - 0.01, color="C8", alpha=0.12, label="within 1.5 points")
        ax.set_ylim(base - 0.06, base + 0.01)
    ax.set_xscale("log")
    ax.set_xticks([0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1, 1.5])
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set(xlabel="latency relative to the float32 original (LiteRT, batch 1, 1 thread; log)",
           ylabel="test accuracy (LiteRT)",
           title=f"Accuracy against measured latency, every method, one machine:\n"
                 f"{machine_label(run['settings']['machine'])}")
    _percent(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    low = ax.get_ylim()[0]
    hidden = [f"{FAMILY_NAMES[r['family']].split(' (')[0]} {_point_label(r)} {r['precision']} "
              f"({100 * r['test_accuracy']:.1f}%)" for r in part4_rows
              if r["test_accuracy"] < low and r["family"] != "original"]
    _footnote(fig, (f"below the axis: {', '.join(hidden)}; " if hidden else "")
              + f"{source}; {_settings_line(run)}")
    return _save(fig, path)


def plot_budget_choices(run, path):
    """Part 5: what the search chose in each conv, per budget: the share of
    filters kept (colour) and the Tucker-2 rank share (text)."""
    front = sorted(run["front"], key=lambda r: -r["budget"])
    convs = list(front[0]["layers"])
    keep = [[row["layers"][c]["keep"] for c in convs] for row in front]
    fig, ax = plt.subplots(figsize=(1.4 * len(convs) + 2.5, 0.55 * len(front) + 2))
    image = ax.imshow(keep, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(front):
        for j, conv in enumerate(convs):
            layer = row["layers"][conv]
            text = f"{layer['widths'][1]} filters" + (
                "" if layer["rank"] is None else f"\nTucker {layer['rank']:g}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if layer["keep"] > 0.6 else "black")
    ax.set_xticks(range(len(convs)), convs, fontsize=8, rotation=20)
    ax.set_yticks(range(len(front)), [f"≤ {r['budget']:g}" for r in front], fontsize=8)
    ax.set(xlabel="conv layer (input side first)", ylabel="latency budget",
           title=f"Choices per layer ({front[0]['precision']}), "
                 f"{machine_label(run['settings']['machine'])}")
    fig.colorbar(image, ax=ax, label="share of filters kept", shrink=0.8)
    _footnote(fig, _settings_line(run))
    return _save(fig, path)


def plot_latency_prediction(run, path):
    """Part 5: whole-model latency measured end to end against the sum of its
    blocks' latencies: the models the line was fitted to, and the screened
    candidates (measured on fewer images)."""
    line = run["calibration"]
    fig, ax = plt.subplots(figsize=(6, 5))
    x = [1e6 * p["predicted"] for p in line["points"]]
    y = [1e6 * p["measured"] for p in line["points"]]
    ax.plot(x, y, "o", color=METHOD_COLOURS["search"], label="whole models (the fit)")
    base = 1e6 * run["precision"]["float32"]["median"]
    candidates = run.get("candidates", [])
    if candidates:
        slope, intercept = line["slope"], 1e6 * line["intercept"]
        ax.plot([(base * c["predicted_ratio"] - intercept) / slope for c in candidates],
                [base * c["ratio"] for c in candidates], "x", color="k",
                label="screened candidates")
    top = 1.05 * max(x + y)
    ax.plot([0, top], [0, top], "k:", lw=0.8, label="measured = sum")
    ax.plot([0, top], [line["intercept"] * 1e6, line["intercept"] * 1e6 + line["slope"] * top],
            "--", color="grey", label=f"fit: {line['slope']:.2f} × sum "
                                      f"{1e6 * line['intercept']:+.0f} µs")
    ax.set(xlabel="sum of the blocks' latencies (µs)", ylabel="measured end to end (µs)",
           xlim=(0, top), ylim=(0, top),
           title=f"Predicting latency from blocks, R² = {line['r2']:.3f}\n"
                 f"{machine_label(run['settings']['machine'], 1)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _footnote(fig, _settings_line(run))
    return _save(fig, path)
