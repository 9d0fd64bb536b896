"""What every figure shares: style, colours, the footnote, percent axes, and
the one `save`. The figures themselves, one function each taking records
of one machine and a path: `plots_training` (Part 1), `plots_compression`
(Parts 2 and 3), `plots_deployment` (Parts 4 and 5)."""

import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; works without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from common.methods import METHODS  # noqa: E402


CHANCE = 0.1  # ten balanced classes


MARKERS = "osD^v"
# One colour per method in every figure (common/methods.py).
METHOD_COLOURS = {family: method.colour for family, method in METHODS.items()}


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


def percent(ax, axis="y"):
    """Accuracy axes in percent (the records hold fractions)."""
    getattr(ax, f"{axis}axis").set_major_formatter(_PercentTicks())


def zoom_panels(title, draw, zoom_ylim, figsize=(12, 4.4)):
    """Two panels drawn by `draw(ax)`: the full accuracy range (left) and a zoom
    on `zoom_ylim` (right), where the differences that matter are. Returns the
    figure and the axes; the legend goes below both."""
    fig, (full, zoom) = plt.subplots(1, 2, figsize=figsize)
    for ax, ylim, name in ((full, (0, 1), "full range"), (zoom, zoom_ylim, "zoomed")):
        draw(ax)
        ax.set(ylim=ylim, title=name)
        percent(ax)
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


def save(fig, path, legend=None, ncol=3, bottom=0.14):
    """Lay the figure out and save it: the one way every figure is saved.

    legend : None (the panels carry their own, or none), an Axes whose
        handles and labels go in one legend below the panels, or a list of
        handles; then `bottom` is the share of the height kept for it.
    The footnote (settings and machine, see `footnote`), if any, stays below all.
    """
    if legend is None:
        fig.tight_layout(rect=(0, _footnote_height(fig), 1, 1))
    else:
        height = _footnote_height(fig)
        notes = [t for t in fig.texts if t.get_gid() == "footnote"]
        lines = notes[0].get_text().count("\n") + 1 if notes else 1
        extra = height * (lines - 1) / lines  # the footnote's lines beyond its first
        handles = legend.get_legend_handles_labels() if hasattr(legend, "get_legend_handles_labels") \
            else (legend, [h.get_label() for h in legend])
        fig.legend(*handles, loc="lower center", ncol=ncol, fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 0.025 + extra))
        fig.tight_layout(rect=(0, bottom + extra, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def settings_line(run):
    """The footnote of a figure: data, train limit, seed, fine-tuning."""
    settings = run.get("settings", {})
    parts = [dataset_name(run)]
    if settings.get("train_limit"):
        parts.append(f"first {settings['train_limit']:,} training images")
    if settings.get("validation"):
        parts.append(f"validation {settings['validation']}")
    recipe = settings.get("fine_tune")
    if recipe:
        peak = recipe.get("peak_learning_rate")
        at = f" at peak learning rate {peak:g}" if peak else ""
        epochs = f"{recipe['epochs']} epoch" + ("s" if recipe["epochs"] != 1 else "")
        parts.append(f"fine-tuned {epochs}{at} ({recipe['precision']})")
    parts.append(f"seed {settings.get('seed', 0)}")
    return "; ".join(parts)


def footnote(fig, text):
    """Settings and machine in small print along the bottom, wrapped to the
    figure's width."""
    fig.text(0.01, 0.005, textwrap.fill(text, int(19 * fig.get_figwidth())), fontsize=7,
             color="0.35", ha="left", va="bottom", gid="footnote")


FAMILY_NAMES = {family: method.legend for family, method in METHODS.items()}
PRECISION_MARKERS = {"float32": "o", "dynamic_int8": "s", "int8": "D"}


def point_label(row):
    """A model's label on a figure point ("k4", "90%", "−50%", "≤0.1")."""
    return METHODS[row["family"]].short(row)
