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
              "part2": lambda run: [part2_tables(run)]}
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
