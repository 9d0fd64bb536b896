"""Markdown tables of any output folder's results, beside the study's numbers.

    python common/report.py                    # the repository's results
    python common/report.py --output-dir DIR   # the runs written under DIR
    python REPO/common/report.py ...           # the same, from any folder

The README's tables are this output, so every number there comes from
results/*.json or models/reference.json.
"""

import glob
import json
import os
import re
import sys

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.cli import REPO_ROOT, Parser, run_main  # noqa: E402
from common import machine  # noqa: E402
from common.methods import METHODS  # noqa: E402
from common.results import ResultsStore, read_json, settings_label  # noqa: E402


def _pct(value):
    return "—" if value is None else f"{100 * value:.2f}%"


def part1_table(part1):
    """Final, epoch-10 and best test accuracy of each Part 1 experiment, with the study's."""
    study = {"baseline": "~59%, saturates after ~15 epochs", "lr0.1": "fails to train",
             "lr1": "fails to train", "maxpool": ">60% by epoch 10, ends above baseline",
             "augment": "~68% after 50 epochs, still rising"}
    recorded = part1.get("meta", {}).get("machine")
    on = machine.label(recorded) if isinstance(recorded, dict) else \
        f"{recorded or 'a machine'}, CPU not recorded"
    rows = ["| experiment | epochs | test acc. epoch 10 | final test acc. | best "
            f"| minutes ({on}) | study |", "|---|---|---|---|---|---|---|"]
    for name, entry in part1["experiments"].items():
        if name == "reference" or entry.get("config", {}).get("validation") or \
                not entry.get("complete"):
            continue   # held out and saved: see `held_out_table`
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


def held_out_table(infos):
    """The models Part 1 trains with the validation split held out (the
    reference, the CIFAR ResNets): accuracy (validation, then test plain and
    with TTA) and training time on the machine each trained on.
    infos : dict name -> its models/<name>.json"""
    rows = ["| | validation | test accuracy | with flip TTA | with flip + translate TTA "
            "(airbench's) | training time | data |", "|---|---|---|---|---|---|---|"]
    for name, info in infos.items():
        trained_on = info["machine"] if isinstance(info["machine"], str) else machine.label(
            info["machine"])
        rows.append(f"| {name} (this suite) | {_pct(info.get('validation_accuracy'))} "
                    f"| {_pct(info['test_accuracy'])} | {_pct(info['test_accuracy_flip_tta'])} "
                    f"| {_pct(info['test_accuracy_flip_translate_tta'])} "
                    f"| {info['training_seconds'] / 60:.1f} min ({trained_on}) "
                    f"| {info['data_source'].split('(')[-1].rstrip(')')} |")
    rows.append("| the study's original model | | ~90% | | | | CIFAR-10 |")
    return "\n".join(rows)


def part3_table(part3, timing=None, study=True):
    """Accuracy, size and speed of each k against the original (validation at
    each stage, test of the fine-tuned model), with the study's k = 4 (when
    `study`: the run is of the reference); times from one timing block (one
    machine), rows it did not time marked."""
    original = part3["original"]
    times = (timing or {}).get("models", {})
    head = f"time ratio ({timing['label']})" if timing else "time ratio"
    rows = [f"| k | ranks (first layer) | validation: decomposed | batch norm re-estimated "
            f"| fine-tuned | test (fine-tuned) | params | FLOPs ratio | {head} |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows.append(f"| original | | {_pct(original['validation_accuracy'])} | | "
                f"| {_pct(original.get('test_accuracy'))} | {original['params']:,} | 1 | 1 |")
    for row in sorted(part3["sweep"], key=lambda r: r["k"]):
        first = next(iter(row["ranks"].values()))
        time = times.get(f"k{row['k']}")
        ratio = "not timed" if time is None else f"{time['ratio']:.3f}"
        rows.append(
            f"| {row['k']} | {first[0]}, {first[1]} | {_pct(row['validation_accuracy'])} "
            f"| {_pct(row['validation_accuracy_recalibrated'])} "
            f"| {_pct(row.get('validation_accuracy_fine_tuned'))} "
            f"| {_pct(row.get('test_accuracy'))} | {row['params']:,} "
            f"| {row['flops'] / original['flops']:.3f} "
            f"| {ratio} |")
    if study:
        rows.append("| study, k = 4 | | | | | 88.02% (original ~90%) | | | 0.77 |")
    return "\n".join(rows)


def part2_sensitivity_table(part2, rates=(0.5, 0.8, 0.9, 0.95, 0.99)):
    """Validation accuracy with one layer pruned at a few rates, layers in depth order."""
    rows = ["| # | layer (kernel shape) | " + " | ".join(f"{100 * r:g}%" for r in rates) + " |",
            "|---|---|" + "---|" * len(rates)]
    layers = sorted(part2["layer_sensitivity"].items(), key=lambda item: item[1]["index"])
    for name, curve in layers:
        accuracy = dict(zip(curve["prune_rates"], curve["validation_accuracy"]))
        rows.append(f"| {curve['index']} | {name} {tuple(curve['shape'])} | "
                    + " | ".join(f"{100 * accuracy[r]:.1f}%" if r in accuracy else "—"
                                 for r in rates) + " |")
    return "\n".join(rows)


def part2_sparsity_table(part2, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95)):
    """One global threshold vs the same rate in every layer, without retraining
    (validation accuracy)."""
    rows = ["| weights pruned overall | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |",
            "|---|" + "---|" * len(sparsities)]
    for kind, label in (("global", "one global threshold"), ("uniform", "same rate in every layer")):
        for key, suffix in (("validation_accuracy", ""),
                            ("validation_accuracy_recalibrated", ", batch norm re-estimated")):
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
        out += ["| sparsity (global) | validation: pruned | batch norm re-estimated "
                "| refit by least squares (no training) | fine-tuned | test (fine-tuned) "
                "| .keras | gzip | sparse format | sparse × smaller |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        dense = part2["dense"]
        sizes = dense["sizes"]
        out.append(f"| 0 (dense) | {_pct(dense['validation_accuracy'])} | | | "
                   f"| {_pct(dense.get('test_accuracy'))} "
                   f"| {sizes['keras_bytes'] / 1e6:.2f} MB | {sizes['gzip_bytes'] / 1e6:.2f} MB "
                   f"| {sizes['sparse_bytes'] / 1e6:.2f} MB "
                   f"| {sizes['keras_bytes'] / sizes['sparse_bytes']:.2f} |")
        for row in sorted(part2["finetune"], key=lambda r: r["sparsity"]):
            out.append(f"| {100 * row['sparsity']:g}% | {_pct(row['validation_accuracy_pruned'])} "
                       f"| {_pct(row['validation_accuracy_recalibrated'])} "
                       f"| {_pct(row['validation_accuracy_refitted'])} "
                       f"| {_pct(row['validation_accuracy_fine_tuned'])} "
                       f"| {_pct(row.get('test_accuracy'))} | {row['keras_bytes'] / 1e6:.2f} MB "
                       f"| {row['gzip_bytes'] / 1e6:.2f} MB | {row['sparse_bytes'] / 1e6:.2f} MB "
                       f"| {sizes['keras_bytes'] / row['sparse_bytes']:.2f} |")
    return "\n".join(out)


def part2_structured_tables(run):
    """Every criterion x allocation per FLOPs reduction (no training, on the
    validation split), then the fine-tuned best of each: its accuracy and its
    time on this machine (rows it did not time marked)."""
    out = ["| FLOPs removed | criterion | allocation | validation: pruned "
           "| batch norm re-estimated |", "|---|---|---|---|---|"]
    for row in sorted(run.get("candidates", []), key=lambda r: (
            r["flops_reduction"], r["criterion"], r["allocation"])):
        out.append(f"| {100 * row['flops_reduction']:g}% | {row['criterion']} | "
                   f"{row['allocation']} | {_pct(row['validation_accuracy'])} "
                   f"| {_pct(row['validation_accuracy_recalibrated'])} |")
    tuned = sorted(run.get("finetuned", []), key=lambda r: r["flops_reduction"])
    if not tuned:
        return "\n".join(out)
    keras_block = machine.this_machine(run.get("keras_timings")) or {}
    litert_block = machine.this_machine(run.get("litert_timings")) or {}
    label = keras_block.get("label") or litert_block.get("label") or "not timed here"
    original = run["original"]
    out += ["", f"| FLOPs removed | chosen | params | FLOPs ratio | validation, fine-tuned "
            f"| test | vs original | Keras time ratio ({label}) | LiteRT float32, 1 thread |",
            "|---|---|---|---|---|---|---|---|---|"]
    for row in tuned:
        name = f"-{100 * row['flops_reduction']:g}%"
        times = [(block.get("models") or {}).get(name) for block in (keras_block, litert_block)]
        test = row.get("test_accuracy")
        out.append(
            f"| {100 * row['flops_reduction']:g}% | {row['criterion']}, {row['allocation']} "
            f"| {row['params']:,} | {row['flops_ratio']:.3f} "
            f"| {_pct(row['validation_accuracy_fine_tuned'])} | {_pct(test)} "
            f"| {_points(test, original.get('test_accuracy'))} | "
            + " | ".join("not timed" if t is None else f"{t['ratio']:.3f}" for t in times) + " |")
    return "\n".join(out)


# The structured-pruning table for ResNet-56 on CIFAR-10 (official data):
# github.com/VainF/Torch-Pruning, reproduce/readme.md, "ResNet-56 / CIFAR-10"
# (base and pruned as printed; its Δ column has two typos, so Δ is computed).
PUBLISHED_RESNET56 = [
    ("DepGraph (group_sl)", 0.9353, 0.9377, 2.13), ("DepGraph (group_sl)", 0.9353, 0.9364, 2.57),
    ("ResRep", 0.9371, 0.9371, 2.12), ("HRank", 0.9326, 0.9317, 2.00),
    ("FPGM", 0.9359, 0.9326, 1.70)]


def _deployed(part4, name):
    """Part 4's timed rows of model `name`: a dict precision -> the dense row,
    and the fewest bytes of its int8 flatbuffers (sparse-encoded or not)."""
    rows = [r for r in (part4 or {}).get("models", []) if r["name"].split(" ")[0] == name]
    int8 = [r["bytes"] for r in rows if r["precision"] == "int8"]
    return ({r["precision"]: r for r in rows if not r["sparse"] and "latency" in r},
            min(int8, default=None))


def _fine_tuning(part2s):
    """A Part 2 structured run's fine-tuning recipe, less the precision it
    computed in (seeds run on different machines): a hashable key."""
    recipe = part2s.get("settings", {}).get("fine_tune") or {}
    return tuple(sorted((k, v) for k, v in recipe.items() if k != "precision"))


def _fine_tuning_words(recipe, usual):
    """"10 epochs of fine-tuning", and what of `recipe` (a `_fine_tuning` key)
    differs from `usual` (another), e.g. ", peak learning rate 0.8"."""
    recipe, usual = dict(recipe), dict(usual)
    if not recipe:
        return "not fine-tuned"
    return f"{recipe.get('epochs')} epochs of fine-tuning" + "".join(
        f", {k.replace('_', ' ')} {v:g}" for k, v in recipe.items()
        if k != "epochs" and v != usual.get(k))


def resnet56_rows(part2s, scratch=None, part2=None, part3=None, part5=None, part4=None,
                  later=()):
    """Our models of one base, for the table beside the published rows.

    part2s : a Part 2 structured run (its original: the base; its fine-tuned
        filter-removed models); part2, part3, part5, part4 : the magnitude
        pruning, Tucker, search and LiteRT runs on the same base, or None
    later : Part 2 structured runs on the same base with other fine-tuning
        recipes; each of their models that keeps the same filters as one of
        part2s's is a row with that model's time (the same architecture),
        without bytes (not deployed)
    scratch : file name of a pruned model -> the record (models/scratch-*.json,
        its "test_accuracy" used) of its architecture trained from scratch
        (Scratch-B)
    Returns (base test accuracy, rows, machine label of the timings or None).
    Each row (the base itself first, where Part 4 deployed it): family
    (common/methods.py, or "scratch"), method, test
    accuracy (as its part measured it), macs (base MACs / the model's), and
    where timed, float32 and int8 (LiteRT batch-1,
    1-thread time / the base's float32: Part 4's run, else Part 2's own
    float32 timing) and bytes (the smallest int8 flatbuffer).
    """
    rows, timed = [], None
    if part4 and part4.get("models"):
        timed = machine.label(part4["settings"]["machine"])
    litert = (machine.this_machine(part2s.get("litert_timings"))
              or (part2s.get("litert_timings") or [None])[-1])

    def add(family, method, accuracy, macs, name, key=None):
        row = {"family": family, "method": method, "accuracy": accuracy, "macs": macs}
        deployed, size = _deployed(part4, name)
        for precision in ("float32", "int8"):
            if precision in deployed:
                row[precision] = deployed[precision]["latency"]["1"]["ratio"]
        if size is not None:
            row["bytes"] = size
        if not timed and litert and key in litert.get("models", {}):
            row["float32"] = litert["models"][key]["ratio"]
        rows.append(row)
        return row

    base = part2s.get("original", {}).get("test_accuracy")
    if _deployed(part4, "original")[0]:                  # what int8 alone buys
        add("original", "the base, deployed as it is", base, 1.0, "original")
    usual = _fine_tuning(part2s)
    retrained = [(other, _fine_tuning_words(_fine_tuning(run), usual)) for run in later
                 for other in run.get("finetuned", []) if "test_accuracy" in other]
    for r in sorted(part2s.get("finetuned", []), key=lambda r: r["flops_reduction"]):
        name = METHODS["structured"].file_name(r["flops_reduction"])
        row = add("structured", f"filters removed ({r['criterion']}, {r['allocation']}, "
                  f"{_fine_tuning_words(usual, usual)})", r.get("test_accuracy"),
                  1 / r["flops_ratio"], name, f"-{100 * r['flops_reduction']:g}%")
        from_scratch = (scratch or {}).get(os.path.basename(r.get("model", "")))
        if from_scratch is not None:
            rows.append({**row, "family": "scratch",
                         "method": "the same architecture from scratch (Scratch-B)",
                         "accuracy": from_scratch["test_accuracy"]})
        for other, words in retrained:
            if "filters" in r and other.get("filters") == r["filters"]:
                rows.append({**{k: v for k, v in row.items() if k != "bytes"},
                             "method": f"filters removed ({other['criterion']}, "
                                       f"{other['allocation']}, {words})",
                             "accuracy": other["test_accuracy"]})
    for r in sorted((part2 or {}).get("finetune", []), key=lambda r: r["sparsity"]):
        add("pruned", f"weights pruned, {100 * r['sparsity']:g}%, fine-tuned (zeros still "
            "multiplied)", r.get("test_accuracy"), 1.0, METHODS["pruned"].file_name(r["sparsity"]))
    for r in (part3 or {}).get("sweep", []):
        add("tucker", f"Tucker-2, k = {r['k']}, fine-tuned", r.get("test_accuracy"),
            part3["original"]["flops"] / r["flops"], METHODS["tucker"].file_name(r["k"]))
    base_digest = (part5 or {}).get("settings", {}).get("model_sha256")
    for r in sorted((part5 or {}).get("front", []), key=lambda r: -r["budget"]):
        if "flops_ratio" in r:
            itself = base_digest is not None and r.get("model_sha256") == base_digest
            add("search", f"searched for {r['budget']:g} of the time ({r['precision']}"
                + (" alone: the base, its own conversion" if itself else "") + ")",
                r.get("test_accuracy"), 1 / r["flops_ratio"],
                METHODS["search"].file_name(r["budget"]))
    if not timed and litert:
        timed = litert["label"]
    return base, rows, timed


def published_table(base, rows, timed):
    """The published rows (PUBLISHED_RESNET56) and ours (`resnet56_rows`), every
    Δ against its own base; ours with LiteRT time and size on `timed`."""
    def ratio(value):
        return "—" if value is None else f"{value:.3f} ({1 / value:.2f}× faster)"
    heading = (f"LiteRT: batch 1, 1 thread, time / the base's float32 time, on {timed}"
               if timed else "LiteRT: not timed yet")
    out = [heading, "", "| method | base | pruned | Δ | MACs ratio | LiteRT float32 "
           "| LiteRT int8 | int8 bytes |", "|---|---|---|---|---|---|---|---|"]
    for name, their_base, pruned, macs in PUBLISHED_RESNET56:
        out.append(f"| {name} (published) | {_pct(their_base)} | {_pct(pruned)} "
                   f"| {_points(pruned, their_base)} | {macs:.2f}× | not reported | | |")
    for row in rows:
        size = f"{row['bytes']:,}" if "bytes" in row else "—"
        out.append(f"| ours: {row['method']} | {_pct(base)} | {_pct(row['accuracy'])} "
                   f"| {_points(row['accuracy'], base)} | {row['macs']:.2f}× "
                   f"| {ratio(row.get('float32'))} | {ratio(row.get('int8'))} | {size} |")
    return "\n".join(out)


def seeds_table(part2s_runs, reduction, bases=None, scratch=None):
    """The base and the filter-removal row at `reduction` over seeds: each
    seed's test accuracy, then each column's mean and sample standard
    deviation over the seeds that have it.

    part2s_runs : dict seed -> that seed's Part 2 structured run (its base
        trained with the seed, the row fine-tuned with it)
    bases : dict seed -> the base's test accuracy (Part 1); it counts for a
        seed whose Part 2 structured run is not there or has not yet measured
        its base, whose row is then a dash
    scratch : dict seed -> file name of a pruned model -> the record of its
        architecture trained from scratch (models/scratch-*.json); given, the
        table is Scratch-B's over seeds: each seed's row at `reduction` names
        the architecture

    Where the seeds were fine-tuned (or, for Scratch-B, trained) in different
    precisions (machines with and without bfloat16), each seed's row names
    its own.
    """
    seeds = {seed: (base, None) for seed, base in (bases or {}).items()}
    precisions = {}
    for seed, run in part2s_runs.items():
        row = next((r for r in run.get("finetuned", []) if r["flops_reduction"] == reduction
                    and r.get("test_accuracy") is not None), None)
        base = run.get("original", {}).get("test_accuracy")
        value = row and row["test_accuracy"]
        precisions[seed] = (run["settings"].get("fine_tune") or {}).get("precision")
        if row and scratch is not None:                    # its architecture from scratch
            record = scratch.get(seed, {}).get(os.path.basename(row.get("model", "")))
            value = record and record["test_accuracy"]
            precisions[seed] = record and record.get("config", {}).get("precision")
        if base is not None:
            seeds[seed] = (base, value)
    named = {seed: precisions[seed] for seed, (_, value) in seeds.items()
             if value is not None and precisions[seed]}           # rows that have one
    if len(set(named.values())) < 2:
        named = {}
    verb = "fine-tuned" if scratch is None else "trained"
    column = "filters removed" if scratch is None else "the same architecture from scratch"
    out = [f"| seed | base | {column} | Δ |", "|---|---|---|---|"]
    out += [f"| {seed}{f' ({verb} in {named[seed]})' if seed in named else ''} "
            f"| {_pct(base)} | {_pct(pruned)} | {_points(pruned, base)} |"
            for seed, (base, pruned) in sorted(seeds.items())]
    pairs = np.array([pair for pair in seeds.values() if pair[1] is not None]).reshape(-1, 2)

    def spread(values, form=".2f", unit="%"):
        values = 100 * np.asarray(values)
        return "—" if len(values) < 2 else (f"{values.mean():{form}} ± "
                                            f"{values.std(ddof=1):.2f}{unit} (n = {len(values)})")
    if len(seeds) > 1:
        out.append(f"| mean ± sd | {spread([b for b, _ in seeds.values()])} "
                   f"| {spread(pairs[:, 1])} | {spread(pairs[:, 1] - pairs[:, 0], '+.2f', '')} |")
    return "\n".join(out)


def _points(value, reference):
    """The difference in percentage points, signed; a dash without both."""
    return "—" if value is None or reference is None else f"{100 * (value - reference):+.2f}"


def _part4_label(row):
    """"Tucker k = 4", "pruned 90%", "filters removed, −50% FLOPs", "searched for
    0.1 of the time" or "original" (common/methods.py)."""
    return METHODS[row["family"]].label(row)


def _part4_rows(part4):
    """Rows in reading order: family, then k or sparsity, then precision."""
    order = {family: i for i, family in enumerate(METHODS)}
    precisions = ("float32", "dynamic_int8", "int8")
    return sorted(part4.get("models", []), key=lambda r: (
        order[r["family"]], r.get("k", 0), r.get("sparsity", 0), r.get("flops_reduction", 0),
        r.get("budget", 0), r["sparse"], precisions.index(r["precision"])))


def part4_table(part4):
    """Accuracy, LiteRT latency and bytes of every flatbuffer (one run: one machine)."""
    rows = ["| model | precision | test acc. (LiteRT) | in Keras | ms/image, 1 thread (min–max) "
            "| time ratio, 1 thread | 2 threads | bytes | gzipped |",
            "|---|---|---|---|---|---|---|---|---|"]
    for row in _part4_rows(part4):
        latency = row.get("latency", {})
        one = latency.get("1")
        rows.append(
            f"| {_part4_label(row)} | {row['precision']}{' sparse' if row['sparse'] else ''}"
            f"{'' if row.get('delegate', 'XNNPACK') == 'XNNPACK' else ' (no XNNPACK)'} "
            f"| {_pct(row.get('test_accuracy'))} | {_pct(row.get('keras_test_accuracy'))} "
            + (f"| {1e3 * one['median']:.3f} ({1e3 * one['min']:.3f}–{1e3 * one['max']:.3f}) "
               f"| {one['ratio']:.3f} | {latency['2']['ratio']:.3f} " if one
               else "| not timed | | ")
            + f"| {row['bytes']:,} | {row['gzip_bytes']:,} |")
    overhead = part4.get("timing", {}).get("call_overhead", {}).get("1")
    if overhead:
        rows.append(f"\nPer-call overhead of the interpreter's Python side (a one-multiply "
                    f"model, timed with the others): {1e6 * overhead['median']:.1f} µs.")
    return "\n".join(rows)


def part4_targets(part4):
    """The latency-budget targets, each with what was measured (LiteRT, 1
    thread, one run); the speed targets of the other kind of CPU marked as
    such (they need that machine)."""
    rows = {r["name"]: r for r in part4.get("models", []) if "latency" in r}
    original = rows.get("original float32")
    if original is None:
        return "targets: not measured (no timed float32 original)"
    base = original["test_accuracy"]
    int8_cpu = machine.has_int8_dot_product(part4["settings"]["machine"])
    lines = ["| target | best measured | met |", "|---|---|---|"]

    def fastest(within, precisions=None):
        close = [r for r in rows.values() if r["test_accuracy"] >= base - within
                 and (precisions is None or r["precision"] in precisions)]
        return min(close, key=lambda r: r["latency"]["1"]["ratio"], default=None)

    def speed(target, within, factor, applies, precisions=None):
        row = fastest(within, precisions)
        shown = "—" if row is None else (
            f"{row['name']}: {1 / row['latency']['1']['ratio']:.2f}× faster, "
            f"{_points(row['test_accuracy'], base)} points")
        met = "—" if row is None else "yes" if 1 / row["latency"]["1"]["ratio"] >= factor \
            else "no"
        lines.append(f"| {target} | {shown} | {met if applies else 'other CPU: ' + met} |")
    speed("int8 dot product: ≥ 10× faster within 1 point", 0.01, 10, int8_cpu)
    speed("int8 dot product: ≥ 8× faster within 1.5 points", 0.015, 8, int8_cpu)
    speed("AVX2 without VNNI: ≥ 4× faster within 1.5 points" + (
        " (here: float32 models only, the speed of structure)" if int8_cpu else ""),
        0.015, 4, not int8_cpu, ("float32",) if int8_cpu else None)
    if original.get("keras_bytes"):
        close = [r for r in rows.values() if r["test_accuracy"] >= base - 0.015]
        smallest = min(close, key=lambda r: r["gzip_bytes"])
        times = original["keras_bytes"] / smallest["gzip_bytes"]
        lines.append(f"| smallest within 1.5 points: ≥ 35× smaller (gzipped) than "
                     f"reference.keras | {smallest['name']}: {times:.1f}× "
                     f"({smallest['gzip_bytes']:,} B), "
                     f"{_points(smallest['test_accuracy'], base)} points "
                     f"| {'yes' if times >= 35 else 'no'} |")
    return "\n".join(lines)


def _choice(layer):
    """One conv's choice as a table cell: "75% (192 of 256), Tucker 1/2"."""
    text = f"{100 * layer['keep']:g}%" + (f" ({layer['widths'][1]})" if layer["keep"] < 1 else "")
    return text + ("" if layer["rank"] is None else f", Tucker {layer['rank']:g}")


def part5_table(part5):
    """The searched front (one machine): per budget, the measured latency,
    accuracy and size; then each conv's choice per budget."""
    front = sorted(part5.get("front", []), key=lambda r: -r["budget"])
    if not front:
        return "no budget searched yet"
    label = machine.label(part5["settings"]["machine"], 1)
    line = part5.get("calibration", {})
    lines = [f"| budget | precision | predicted time | measured ({label}) | validation "
             "| test | params | gzipped | fine-tune |", "|---|---|---|---|---|---|---|---|---|"]
    for row in front:
        measured = "not timed" if "latency" not in row else f"{row['latency']['ratio']:.3f}"
        tuned = "—" if row["fine_tune_seconds"] is None else \
            f"{row['fine_tune_seconds'] / 60:.1f} min"
        lines.append(
            f"| {row['budget']:g} | {row['precision']} | {row['predicted_ratio']:.3f} "
            f"| {measured} | {_pct(row['validation_accuracy'])} "
            f"| {_pct(row.get('test_accuracy'))} | {row['params']:,} "
            f"| {row['gzip_bytes']:,} B | {tuned} |")
    convs = list(front[0]["layers"])
    lines += ["", "| budget | " + " | ".join(convs) + " |", "|---|" + "---|" * len(convs)]
    for row in front:
        lines.append(f"| {row['budget']:g} | "
                     + " | ".join(_choice(row["layers"][c]) for c in convs) + " |")
    if line:
        lines.append(f"\nLatency predicted from the blocks: {line['slope']:.3f} × sum "
                     f"{1e6 * line['intercept']:+.1f} µs, R² = {line['r2']:.3f} over "
                     f"{len(line['points'])} whole models.")
    return "\n".join(lines)


def _runs_on(output_dir, part, digest):
    """The runs of results/<part>.json under `output_dir` made from the model
    with `digest`, in the file's order."""
    return [r for r in ResultsStore(os.path.join(output_dir, "results", f"{part}.json")).runs()
            if r["settings"].get("model_sha256") == digest]


def per_machine(part4s, part5s):
    """Pairs (Part 4 run, Part 5 run) of one machine each, in the order the
    machines first appear (Part 4's runs first); one (None, None) without any:
    timings of two machines are never set side by side."""
    machines = []
    for run in part4s + part5s:
        if not any(machine.same_machine(run["settings"]["machine"], m) for m in machines):
            machines.append(run["settings"]["machine"])
    pick = lambda runs, m: next(   # noqa: E731
        (r for r in reversed(runs) if machine.same_machine(r["settings"]["machine"], m)), None)
    return [(pick(part4s, m), pick(part5s, m)) for m in machines] or [(None, None)]


def figure_path(figure, timed, first):
    """The figure of the first machine at `figure`; another's beside it,
    named after its machine (resnet56_published-intel-xeon-...png)."""
    if first or not timed:
        return figure
    stem, ext = os.path.splitext(figure)
    return f"{stem}-{re.sub(r'[^a-z0-9]+', '-', timed.lower()).strip('-')}{ext}"


def resnet56_sections(output_dir, figure=None):
    """For the first Part 2 structured run on each resnet56.keras under
    `output_dir` (with the first run of each other fine-tuning recipe on the
    same model; runs with other reductions are in the part's own tables): our
    rows beside the published ones (with the Tucker, search, magnitude
    pruning, LiteRT and Scratch-B runs made from the same base there), one
    table per machine that timed them; where output_dir/seed*/ hold the same
    study for other seeds, the spread, one table per fine-tuning recipe of
    this seed's runs; with `figure`, the comparison drawn to that path
    (another machine's beside it, see `figure_path`)."""
    scratch = _scratch(output_dir)
    other_seeds, other_bases = {}, {}           # other_seeds: fine-tuning recipe -> seed -> run
    other_scratch = {}                          # seed -> its folder's Scratch-B runs
    for folder in sorted(glob.glob(os.path.join(output_dir, "seed*", "results"))):
        folder_scratch = _scratch(os.path.dirname(folder))
        for run in ResultsStore(os.path.join(folder, "part2_structured.json")).runs():
            other_seeds.setdefault(_fine_tuning(run), {}).setdefault(
                run["settings"]["seed"], run)
            other_scratch[run["settings"]["seed"]] = folder_scratch
            if run.get("original", {}).get("test_accuracy") is not None:
                other_bases.setdefault(run["settings"]["seed"], run["original"]["test_accuracy"])
        for run in ResultsStore(os.path.join(folder, "part1.json")).runs():
            trained = run.get("experiments", {}).get("resnet56", {})
            if trained.get("complete") and "final_test_accuracy" in trained:
                other_bases[run["settings"]["seed"]] = trained["final_test_accuracy"]
    out, seen = [], set()
    structured = ResultsStore(os.path.join(output_dir, "results", "part2_structured.json")).runs()
    for part2s in structured:
        digest = part2s["settings"]["model_sha256"]
        if (os.path.basename(part2s.get("meta", {}).get("model", "")) != "resnet56.keras"
                or digest in seen):
            continue
        seen.add(digest)
        part2, part3 = ((_runs_on(output_dir, part, digest) or [None])[-1]
                        for part in ("part2", "part3"))
        mine = {}                                   # this seed's first run per recipe
        for run in structured:
            if run["settings"]["model_sha256"] == digest:
                mine.setdefault(_fine_tuning(run), run)
        later = [run for recipe, run in mine.items() if recipe != _fine_tuning(part2s)]
        pairs = per_machine(_runs_on(output_dir, "part4", digest),
                            _runs_on(output_dir, "part5_budget", digest))
        for i, (part4, part5) in enumerate(pairs):
            base, rows, timed = resnet56_rows(part2s, scratch, part2, part3, part5, part4, later)
            out += ["ResNet-56 beside the published rows", "", published_table(base, rows, timed)]
            if figure:
                from common.plots_compression import plot_published
                out += ["", "wrote " + plot_published(PUBLISHED_RESNET56, base, rows, timed,
                                                      figure_path(figure, timed, i == 0))]
            out.append("")
        trained = {**other_scratch, part2s["settings"]["seed"]: scratch}
        for recipe, run in mine.items():
            seeds = {**other_seeds.get(recipe, {}), run["settings"]["seed"]: run}
            if len(seeds.keys() | other_bases.keys()) < 2:
                continue
            for reduction in sorted({r["flops_reduction"] for r in run.get("finetuned", [])}):
                out += [f"Over seeds, filters removed at −{100 * reduction:g}% FLOPs, "
                        + _fine_tuning_words(recipe, _fine_tuning(part2s)), "",
                        seeds_table(seeds, reduction, other_bases), ""]
                if recipe == _fine_tuning(part2s) and any(trained.values()):
                    # every recipe of a seed fine-tunes the same architecture
                    out += [f"Over seeds, the −{100 * reduction:g}% architecture trained from "
                            "scratch for the same compute (Scratch-B)", "",
                            seeds_table(seeds, reduction, other_bases, trained), ""]
    if figure and not out:
        raise ValueError(f"--figure: no Part 2 structured run on a resnet56.keras in "
                         f"{output_dir}/results: nothing to draw")
    return out


def _scratch(output_dir):
    """File name of a pruned model -> the record (models/scratch-*.json) of
    its architecture trained from scratch (Part 1 --architecture) in
    `output_dir`."""
    return {os.path.basename(info.get("config", {}).get("architecture", "")): info
            for info in map(read_json, glob.glob(os.path.join(
                output_dir, "models", "scratch-*.json")))}


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
    parser.add_argument("--figure", metavar="PNG",
                        help="also draw the ResNet-56 comparison with the published rows "
                             "to this file, where --output-dir holds a ResNet-56 run")
    args = parser.parse_args(argv)
    held_out = {name: os.path.join(args.output_dir, "models", f"{name}.json")
                for name in ("reference", "resnet56", "resnet20")}
    tables = {"part1": lambda run: [part1_table(run)] + (
                  [augment_trend(run)] if run["experiments"].get("augment", {}).get("complete")
                  else []),
              "part3": lambda run: [part3_table(run)] if run.get("sweep") else [],
              "part2": lambda run: [part2_tables(run)],
              "part2_structured": lambda run: [part2_structured_tables(run)],
              "part4": lambda run: [f"LiteRT on {machine.label(run['settings']['machine'])}",
                                    "", part4_table(run), "", part4_targets(run)]
              if run.get("models") else [],
              "part5_budget": lambda run: [part5_table(run)]}
    printed = 0
    for part, make in tables.items():
        path = os.path.join(args.output_dir, "results", f"{part}.json")
        runs = ResultsStore(path).runs()
        for run in runs:
            print(*([run_heading(path, run, runs)] if len(runs) > 1 else []),
                  *make(run), "", sep="\n")
            printed += 1
        infos = {name: read_json(path) for name, path in held_out.items()
                 if os.path.exists(path)}
        if part == "part1" and infos:  # the models Parts 2-5 compress
            print(held_out_table(infos), "", sep="\n")
    sections = resnet56_sections(args.output_dir, args.figure)
    if sections:
        print(*sections, "", sep="\n")
    if not printed:
        raise ValueError(f"{args.output_dir}: no results/part*.json with runs to tabulate")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
