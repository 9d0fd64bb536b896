"""Markdown tables of any output folder's results, beside the study's numbers.

    python -m common.report                    # the repository's results
    python -m common.report --output-dir DIR   # the runs written under DIR
    python REPO/common/report.py ...           # the same, from any folder

The README's tables are this output, so every number there comes from
results/*.json or models/reference.json.
"""

import json
import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.cli import REPO_ROOT, Parser, run_main  # noqa: E402
from common.results import ResultsStore, read_json, settings_label  # noqa: E402


def _pct(value):
    return "—" if value is None else f"{100 * value:.2f}%"


def part1_table(part1):
    """Final, epoch-10 and best test accuracy of each Part 1 experiment, with the study's."""
    study = {"baseline": "~59%, saturates after ~15 epochs", "lr0.1": "fails to train",
             "lr1": "fails to train", "maxpool": ">60% by epoch 10, ends above baseline",
             "augment": "~68% after 50 epochs, still rising"}
    rows = ["| experiment | epochs | test acc. epoch 10 | final test acc. | best | minutes | study |",
            "|---|---|---|---|---|---|---|"]
    for name, entry in part1["experiments"].items():
        if name == "reference" or not entry.get("complete"):
            continue
        epochs = entry["epochs"]
        at10 = next((e["test_accuracy"] for e in epochs if e["epoch"] == 10), None)
        rows.append(f"| `{name}` | {len(epochs)} | {_pct(at10)} | {_pct(entry['final_test_accuracy'])} "
                    f"| {_pct(max(e['test_accuracy'] for e in epochs))} "
                    f"| {sum(e['seconds'] for e in epochs) / 60:.1f} | {study.get(name, '')} |")
    return "\n".join(rows)


def augment_trend(part1):
    """Step 7's 'still rising' check: best of the last 10 epochs vs the 10 before."""
    epochs = part1["experiments"]["augment"]["epochs"]
    acc = [e["test_accuracy"] for e in epochs]
    return (f"`augment`: best test accuracy of epochs {len(acc) - 9}–{len(acc)}: "
            f"{_pct(max(acc[-10:]))}; of epochs {len(acc) - 19}–{len(acc) - 10}: "
            f"{_pct(max(acc[-20:-10]))}.")


def reference_table(info):
    rows = ["| | test accuracy | with flip TTA | with flip + translate TTA (airbench's) "
            "| training time | data |", "|---|---|---|---|---|---|"]
    rows.append(f"| reference (this suite) | {_pct(info['test_accuracy'])} "
                f"| {_pct(info['test_accuracy_flip_tta'])} "
                f"| {_pct(info['test_accuracy_flip_translate_tta'])} "
                f"| {info['training_seconds'] / 60:.1f} min "
                f"({info['machine']}) | {info['data_source'].split('(')[-1].rstrip(')')} |")
    rows.append("| the study's original model | ~90% | | | | CIFAR-10 |")
    return "\n".join(rows)


def part3_table(part3):
    """Accuracy, size and speed of each k against the original, with the study's k = 4."""
    original = part3["original"]
    rows = ["| k | ranks (first layer) | test acc. | batch norm re-estimated | after fine-tune "
            "| params | FLOPs ratio | time ratio (median) | time min–max (s) |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows.append(f"| original | | {_pct(original['test_accuracy'])} | | | {original['params']:,} | 1 | 1 "
                f"| {original['forward_seconds']['min']:.2f}–{original['forward_seconds']['max']:.2f} |")
    for row in part3["sweep"]:
        first = next(iter(row["ranks"].values()))
        time = row["forward_seconds"]  # part3_tucker.py times every row of the sweep
        rows.append(
            f"| {row['k']} | {first[0]}, {first[1]} | {_pct(row['test_accuracy'])} "
            f"| {_pct(row.get('test_accuracy_recalibrated'))} "
            f"| {_pct(row.get('fine_tuned_test_accuracy'))} | {row['params']:,} "
            f"| {row['flops_ratio']:.3f} | {row['time_ratio']:.3f} "
            f"| {time['min']:.2f}–{time['max']:.2f} |")
    rows.append("| study, k = 4 | | 88.02% (original ~90%) | | | | | 0.77 | |")
    return "\n".join(rows)


def part2_sensitivity_table(part2, rates=(0.5, 0.8, 0.9, 0.95, 0.99)):
    """Test accuracy with one layer pruned at a few rates, layers in depth order."""
    rows = ["| # | layer (kernel shape) | " + " | ".join(f"{100 * r:g}%" for r in rates) + " |",
            "|---|---|" + "---|" * len(rates)]
    layers = sorted(part2["layer_sensitivity"].items(), key=lambda item: item[1]["index"])
    for name, curve in layers:
        accuracy = dict(zip(curve["prune_rates"], curve["test_accuracy"]))
        rows.append(f"| {curve['index']} | {name} {tuple(curve['shape'])} | "
                    + " | ".join(f"{100 * accuracy[r]:.1f}%" if r in accuracy else "—"
                                 for r in rates) + " |")
    return "\n".join(rows)


def part2_sparsity_table(part2, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95)):
    """One global threshold vs the same rate in every layer, without retraining."""
    rows = ["| weights pruned overall | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |",
            "|---|" + "---|" * len(sparsities)]
    for kind, label in (("global", "one global threshold"), ("uniform", "same rate in every layer")):
        for key, suffix in (("test_accuracy", ""),
                            ("test_accuracy_recalibrated", ", batch norm re-estimated")):
            if key not in part2[kind]:
                continue
            accuracy = dict(zip(part2[kind]["sparsity"], part2[kind][key]))
            rows.append(f"| {label}{suffix} | " + " | ".join(
                f"{100 * accuracy[s]:.1f}%" if s in accuracy else "—" for s in sparsities) + " |")
    return "\n".join(rows)


def part2_tables(part2):
    """Per-layer sensitivity, global vs uniform, fine-tuning and sizes of Part 2."""
    out = []
    if part2.get("layer_sensitivity"):
        out += [part2_sensitivity_table(part2), ""]
    if part2.get("global") and part2.get("uniform"):
        out += [part2_sparsity_table(part2), ""]
    if part2.get("finetune"):
        out += ["| sparsity (global) | pruned | batch norm re-estimated | refit by least squares "
                "(no training) | fine-tuned | .keras | gzip | sparse format | sparse × smaller |",
                "|---|---|---|---|---|---|---|---|---|"]
        dense = part2["dense_sizes"]
        out.append(f"| 0 (dense) | {_pct(part2['dense_test_accuracy'])} | | | | "
                   f"{dense['keras_bytes'] / 1e6:.2f} MB | {dense['gzip_bytes'] / 1e6:.2f} MB "
                   f"| {dense['sparse_bytes'] / 1e6:.2f} MB | {dense['keras_bytes'] / dense['sparse_bytes']:.2f} |")
        for row in part2["finetune"]:
            out.append(f"| {100 * row['sparsity']:.0f}% | {_pct(row['test_accuracy_before'])} "
                       f"| {_pct(row.get('test_accuracy_recalibrated'))} "
                       f"| {_pct(row.get('test_accuracy_refitted'))} "
                       f"| {_pct(row['test_accuracy_after'])} | {row['keras_bytes'] / 1e6:.2f} MB "
                       f"| {row['gzip_bytes'] / 1e6:.2f} MB | {row['sparse_bytes'] / 1e6:.2f} MB "
                       f"| {dense['keras_bytes'] / row['sparse_bytes']:.2f} |")
    return "\n".join(out)


def part2_structured_tables(run):
    """Every criterion x allocation per FLOPs reduction (no training), then the
    fine-tuned best of each with its measured time."""
    out = ["| FLOPs removed | criterion | allocation | pruned | batch norm re-estimated "
           "| held-out training images |", "|---|---|---|---|---|---|"]
    for row in sorted(run.get("candidates", []), key=lambda r: (
            r["flops_reduction"], r["criterion"], r["allocation"])):
        out.append(f"| {100 * row['flops_reduction']:g}% | {row['criterion']} | "
                   f"{row['allocation']} | {_pct(row['test_accuracy'])} "
                   f"| {_pct(row['test_accuracy_recalibrated'])} "
                   f"| {_pct(row['selection_accuracy'])} |")
    tuned = sorted(run.get("finetuned", []), key=lambda r: r["flops_reduction"])
    if tuned:
        out += ["", "| FLOPs removed | chosen | params | FLOPs ratio | fine-tuned "
                "| vs dense | Keras time ratio (batch 256) | LiteRT, 1 thread | 2 threads |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in tuned:
            timed = "keras_time_ratio" in row
            out.append(
                f"| {100 * row['flops_reduction']:g}% | {row['criterion']}, {row['allocation']} "
                f"| {row['params']:,} | {row['flops_ratio']:.3f} "
                f"| {_pct(row['test_accuracy_after'])} "
                f"| {100 * (row['test_accuracy_after'] - run['dense_test_accuracy']):+.2f} "
                + (f"| {row['keras_time_ratio']:.3f} | {row['litert_time_ratio']['1']:.3f} "
                   f"| {row['litert_time_ratio']['2']:.3f} |" if timed else "| — | — | — |"))
    return "\n".join(out)


def _part4_label(row):
    """"Tucker k = 4", "pruned 90%", "filters removed, −50% FLOPs" or "original"."""
    if row["family"] == "tucker":
        return f"Tucker k = {row['k']}"
    if row["family"] == "pruned":
        return f"pruned {100 * row['sparsity']:g}%"
    if row["family"] == "structured":
        return f"filters removed, −{100 * row['flops_reduction']:g}% FLOPs"
    return "original"


def _part4_rows(part4):
    """Rows in reading order: family, then k or sparsity, then precision."""
    order = {"original": 0, "tucker": 1, "pruned": 2, "structured": 3}
    precisions = ("float32", "dynamic_int8", "int8")
    return sorted(part4.get("models", []), key=lambda r: (
        order[r["family"]], r.get("k", 0), r.get("sparsity", 0), r.get("flops_reduction", 0),
        r["sparse"],
        precisions.index(r["precision"])))


def part4_table(part4):
    """Accuracy, LiteRT latency and bytes of every flatbuffer, with Keras' numbers."""
    rows = ["| model | precision | test acc. (LiteRT) | in Keras | ms/image, 1 thread (min–max) "
            "| time ratio, 1 thread | 2 threads | Keras time ratio (batch 256) | bytes | gzipped |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for row in _part4_rows(part4):
        latency, ratio = row.get("latency", {}).get("1"), row.get("time_ratio", {})
        # Keras' time belongs to the Keras model: shown on its float32 row
        keras_ratio = row.get("keras_time_ratio") if row["precision"] == "float32" \
            and not row["sparse"] else None
        rows.append(
            f"| {_part4_label(row)} | {row['precision']}{' sparse' if row['sparse'] else ''}"
            f"{'' if row.get('delegate', 'XNNPACK') == 'XNNPACK' else ' (no XNNPACK)'} "
            f"| {_pct(row['test_accuracy'])} | {_pct(row.get('keras_test_accuracy'))} "
            + (f"| {1e3 * latency['median']:.3f} ({1e3 * latency['min']:.3f}–"
               f"{1e3 * latency['max']:.3f}) | {ratio['1']:.2f} | {ratio['2']:.2f} "
               if latency else "| — | — | — ")
            + f"| {'—' if keras_ratio is None else f'{keras_ratio:.2f}'} "
            f"| {row['bytes']:,} | {row['gzip_bytes']:,} |")
    return "\n".join(rows)


def part4_targets(part4):
    """Part 4's targets, each with what was measured (LiteRT, 1 thread)."""
    rows = {r["name"]: r for r in part4.get("models", []) if "time_ratio" in r}
    original = rows.get("original float32")
    if original is None:
        return "targets: not measured (no timed float32 original)"
    base, reference_keras_bytes = original["test_accuracy"], original["keras_bytes"]

    def drop(row):
        return f"{100 * (row['test_accuracy'] - base):+.2f} points"
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(target, row, measured, met):
        lines.append(f"| {target} | " + (f"{row['name']}: {measured}, {drop(row)} | "
                                          f"{'yes' if met else 'no'} |"
                                          if row else "not measured | — |"))
    k4 = rows.get("tucker_k4 float32")
    add("Tucker k = 4 float32: time ≤ 0.45 of the original's, within 1 point", k4,
        k4 and f"time ×{k4['time_ratio']['1']:.3f}",
        k4 and k4["time_ratio"]["1"] <= 0.45 and k4["test_accuracy"] >= base - 0.01)
    int8 = rows.get("original int8")
    add("original in full int8: time ≤ 0.35, within 0.5 point", int8,
        int8 and f"time ×{int8['time_ratio']['1']:.3f}",
        int8 and int8["time_ratio"]["1"] <= 0.35 and int8["test_accuracy"] >= base - 0.005)
    close = [r for r in rows.values() if r["test_accuracy"] >= base - 0.015]
    fastest = min((r for r in close if r["family"] != "original" and "int8" in r["precision"]),
                  key=lambda r: r["time_ratio"]["1"], default=None)
    add("best int8 compressed model within 1.5 points: ≥ 5× faster", fastest,
        fastest and f"{1 / fastest['time_ratio']['1']:.2f}× faster",
        fastest and 1 / fastest["time_ratio"]["1"] >= 5)
    smallest = min(close, key=lambda r: r["gzip_bytes"], default=None)
    add("smallest file within 1.5 points: ≥ 20× smaller (gzipped) than reference.keras",
        smallest, smallest and f"{reference_keras_bytes / smallest['gzip_bytes']:.1f}× smaller "
        f"({smallest['gzip_bytes']:,} B)",
        smallest and reference_keras_bytes / smallest["gzip_bytes"] >= 20)
    return "\n".join(lines)


def run_heading(path, run, runs):
    """A line naming one run of several in a file: its label and settings."""
    shown = {k: v for k, v in run["settings"].items() if not k.endswith("sha256")}
    return (f"**{os.path.relpath(path)}, run {runs.index(run) + 1} of {len(runs)} "
            f"(run-{settings_label(run['settings'])})**: {json.dumps(shown)}\n")


def main(argv=None):
    parser = Parser(description="Print the results of every run under --output-dir as "
                                "Markdown tables, beside the study's numbers.")
    parser.add_argument("--output-dir", metavar="DIR", default=REPO_ROOT,
                        help="folder holding results/ (default: the repository)")
    args = parser.parse_args(argv)
    reference = os.path.join(args.output_dir, "models", "reference.json")
    tables = {"part1": lambda run: [part1_table(run)] + (
                  [augment_trend(run)] if run["experiments"].get("augment", {}).get("complete")
                  else []),
              "part3": lambda run: [part3_table(run)] if run.get("sweep") else [],
              "part2": lambda run: [part2_tables(run)],
              "part2_structured": lambda run: [part2_structured_tables(run)],
              "part4": lambda run: [part4_table(run), "", part4_targets(run)]
              if run.get("models") else []}
    printed = 0
    for part, make in tables.items():
        path = os.path.join(args.output_dir, "results", f"{part}.json")
        runs = ResultsStore(path).runs()
        for run in runs:
            print(*([run_heading(path, run, runs)] if len(runs) > 1 else []),
                  *make(run), "", sep="\n")
            printed += 1
        if part == "part1" and os.path.exists(reference):  # the model Parts 2 and 3 use
            print(reference_table(read_json(reference)), "", sep="\n")
    if not printed:
        raise ValueError(f"{args.output_dir}: no results/part*.json with runs to tabulate")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
