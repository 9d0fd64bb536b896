"""Parts 4 and 5's figures: LiteRT deployment and the latency-budget search."""

import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter

from common.machine import label as machine_label
from common.plots import (FAMILY_NAMES, METHOD_COLOURS, PRECISION_MARKERS, footnote, percent,
                          point_label, save, settings_line)


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
                    label = point_label(row)
                    if label:
                        ax.annotate(label, (x_of(row), row["test_accuracy"]), fontsize=7,
                                    color=colour, xytext=(4, 5) if i % 2 else (-4, -10),
                                    ha="left" if i % 2 else "right", textcoords="offset points")
            if star:
                ax.axvline(x_of(members[0]), color="k", ls=":", lw=0.8)
                ax.axhline(members[0]["test_accuracy"], color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        xs = [x_of(r) for r in rows]
        lo, hi = min(xs) / 1.3, max(xs) * 1.15     # room for a label left of a point
        ax.set_xticks([t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20) if lo <= t <= hi])
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3, which="both")
    time_ax.set(ylabel="test accuracy (LiteRT)")
    percent(time_ax)
    families = {row["family"] for row in rows}
    handles = [plt.Line2D([], [], ls="", marker="*", ms=12, color="k",
                          label="original, float32 (dotted lines)")]
    handles += [plt.Line2D([], [], ls="-", marker="o", color=METHOD_COLOURS[family],
                           label=name) for family, name in FAMILY_NAMES.items()
                if family in families and family != "original"]
    handles += [plt.Line2D([], [], ls="", marker=PRECISION_MARKERS[p], color="grey", label=p)
                for p in ("float32", "int8")]

    timing = settings["timing"]
    fig.suptitle(f"Deployed in LiteRT on {machine_label(settings['machine'])} (XNNPACK; labels on "
                 "the int8 points)")
    footnote(fig, f"{timing['images']} validation images x {timing['repeats']} interleaved "
                   f"rounds per flatbuffer; accuracy on all test images; dynamic-range int8 "
                   f"and sparse-encoded: docs/part4.md; "
                   f"{settings_line(results)}")
    return save(fig, path, legend=handles, ncol=4, bottom=0.11)



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
    merged = {}                        # budgets that int8 alone meets share one point
    for x, y, text in points:
        merged.setdefault((x, y), []).append(text)
    points = sorted((x, y, ", ".join(texts)) for (x, y), texts in merged.items())
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
                ax.annotate(point_label(r), (r["latency"]["1"]["ratio"], r["test_accuracy"]),
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
    percent(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    low = ax.get_ylim()[0]
    hidden = [f"{FAMILY_NAMES[r['family']].split(' (')[0]} {point_label(r)} {r['precision']} "
              f"({100 * r['test_accuracy']:.1f}%)" for r in part4_rows
              if r["test_accuracy"] < low and r["family"] not in ("original", "search")]
    hidden = [f"searched {text} ({100 * y:.1f}%)" for _, y, text in points if y < low] + hidden
    footnote(fig, (f"below the axis: {', '.join(hidden)}; " if hidden else "")
              + f"{source}; {settings_line(run)}")
    return save(fig, path)


def plot_budget_choices(run, path):
    """Part 5: what the search chose in each conv, per budget: the share of
    filters kept (colour) and the Tucker-2 rank share (text)."""
    front = sorted(run["front"], key=lambda r: -r["budget"])
    convs = list(front[0]["layers"])
    keep = [[row["layers"][c]["keep"] for c in convs] for row in front]
    tall = len(convs) > 12    # a deep network's convs go down the page, budgets across
    if tall:
        fig, ax = plt.subplots(figsize=(1.3 * len(front) + 4, 0.28 * len(convs) + 2))
        image = ax.imshow(list(map(list, zip(*keep))), cmap="Greens", vmin=0, vmax=1,
                          aspect="auto")
    else:
        fig, ax = plt.subplots(figsize=(1.4 * len(convs) + 2.5, 0.55 * len(front) + 2))
        image = ax.imshow(keep, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(front):
        for j, conv in enumerate(convs):
            layer = row["layers"][conv]
            text = f"{layer['widths'][1]} filters" + (
                "" if layer["rank"] is None else ("," if tall else "\n")
                + f" Tucker {layer['rank']:g}")
            ax.text(*((i, j) if tall else (j, i)), text, ha="center", va="center",
                    fontsize=6 if tall else 7,
                    color="white" if layer["keep"] > 0.6 else "black")
    budgets = [f"≤ {r['budget']:g}" for r in front]
    if tall:
        ax.set_xticks(range(len(front)), budgets, fontsize=8)
        ax.set_yticks(range(len(convs)), convs, fontsize=7)
        ax.set(xlabel="latency budget", ylabel="conv layer (input side first)")
    else:
        ax.set_xticks(range(len(convs)), convs, fontsize=8, rotation=20)
        ax.set_yticks(range(len(front)), budgets, fontsize=8)
        ax.set(xlabel="conv layer (input side first)", ylabel="latency budget")
    ax.set_title(f"Choices per layer ({front[0]['precision']}),"
                 + ("\n" if tall else " ") + machine_label(run["settings"]["machine"]))
    fig.colorbar(image, ax=ax, label="share of filters kept", shrink=0.8)
    footnote(fig, settings_line(run))
    return save(fig, path)


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
    footnote(fig, settings_line(run))
    return save(fig, path)
