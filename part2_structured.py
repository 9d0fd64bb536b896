"""Part 2, structured: does removing whole filters make the network really faster,
and what does it cost in accuracy?

The study's second drawback of pruning: a sparse network "will not have the
efficiency gains over a fully dense network" (measured: 90% of the weights
pruned runs at dense speed in Keras and in LiteRT). Removing whole conv
filters instead leaves a smaller dense network (common.structured). For each
FLOPs reduction, filters are ranked by their L1 norm or by how much the next
layer reads them (mean activation x weights), and allocated the same share in
every layer, by one ranking across layers, or from a per-layer sensitivity
sweep weighed by each layer's FLOPs; each pair is measured on the validation
split as pruned and with batch norm re-estimated (no training, seconds each).
The pair that does best there is fine-tuned with the shared recipe (the
original as teacher), reported once on the test set, and timed side by side
with the original on this machine in Keras (batch 256) and in LiteRT
(float32, batch 1, 1 thread).

    python part2_structured.py                     # everything (~50 min on 2 CPU cores)
    python part2_structured.py --flops-reductions 0.5 --fine-tune-epochs 0   # quick (committed sweep reused)
    python part2_structured.py --plot-only         # redraw the figure from the JSON

The model is models/reference.keras of --output-dir, else the repository's;
--model takes any .keras CIFAR-10 classifier: channels are removed in groups
followed through residual adds, concatenations and depthwise convs
(common/channels.py), and the run lists the groups (what --layers takes) and
the layers it keeps whole, with why. Results go to results/part2_structured.json piece by
piece, keyed by the settings; a rerun skips finished pieces unless --force.
Fine-tuned models are saved as models/structured_<percent>.keras of the run's
folder (see common/runs.py); an interrupted fine-tune resumes from its last
epoch.
"""

import os

# TensorFlow is imported inside the functions that need it, so that --help and
# --plot-only answer at once.
from common import cli, machine, runs
from common.results import NUMBER, Map

# ---- configuration ---------------------------------------------------------
# Everything that changes this part's numbers, in the run's key
# (`run_settings`; the timings' parameters key each timing instead).
CONFIG = {
    # Shares of the FLOPs removed (--flops-reductions): 50% already runs in
    # about half the time; 75% is where accuracy starts to fall fast.
    "flops_reductions": [0.5, 0.55, 0.65, 0.75],
    # Which filters go; "bn_scale" (Network Slimming's |gamma|) only where
    # every group passes a batch norm with a learned scale (the reference's
    # batch norms have none).
    "criteria": ["l1", "activation", "bn_scale"],
    "allocations": ["uniform", "global", "sensitivity"],
    # The per-layer sweep: that layer alone keeps these shares of its filters
    # (batch norm re-estimated); shares in between are interpolated.
    "sensitivity_shares": [0.75, 0.5, 0.25],
    # Training images for the activation criterion (every channel is seen at
    # >= 9 positions per image in the last block's 3x3 maps) and for batch-norm
    # re-estimation of each pruned candidate (~2 s each).
    "importance_images": 2_000,
    "keras_timing": {"runtime": "keras", "batch_size": 256, "repeats": 7,
                     "batch_norm_folded": True},
    # LiteRT at batch 1, as Part 4 times, on the first 300 validation images.
    "litert_timing": {"runtime": "litert float32", "batch_size": 1, "threads": 1,
                      "repeats": 7, "images": 300, "batch_norm_folded": True},
}
# Settings the sensitivity sweep and the screen of candidates do not read: a
# new run that differs from a stored one only in these takes over its
# measurements (hours on a ResNet-56) instead of making them again.
SCREEN_FREE = ("flops_reductions", "fine_tune")
RESULTS_FILE = "part2_structured.json"
SUMMARY = {"median": NUMBER, "min": NUMBER, "max": NUMBER, "ratio": NUMBER}
CANDIDATE = {"key": str, "flops_reduction": NUMBER, "criterion": str, "allocation": str,
             "validation_accuracy": NUMBER, "validation_accuracy_recalibrated": NUMBER,
             "params": int, "flops": int, "flops_ratio": NUMBER, "filters": Map(int)}
SCHEMA = {
    "original": {"validation_accuracy": NUMBER, "test_accuracy?": NUMBER},
    "sensitivity": Map(Map({"share": [NUMBER], "accuracy": [NUMBER]})),
    "candidates": [CANDIDATE],
    "screen_from?": str,
    "finetuned": [{**CANDIDATE, "validation_accuracy_fine_tuned": NUMBER, "model": str,
                   "model_sha256": str, "test_accuracy?": NUMBER}],
    "timings": [{"machine": dict, "label": str, "params": dict, "digests": Map(str),
                 "models": Map(SUMMARY)}],
}
# -----------------------------------------------------------------------------


def reduction_name(reduction):
    """"50" for 0.5, "50.4" for 0.504: a FLOPs reduction's name in files and keys."""
    return f"{100 * reduction:g}"


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--model", metavar="PATH", help=cli.MODEL_HELP.format("prune"))
    parser.add_argument("--flops-reductions", type=cli.open_fraction("FLOPs reduction"),
                        nargs="+", metavar="R", default=CONFIG["flops_reductions"],
                        help="shares of the FLOPs to remove, each in (0, 1) "
                             "(default: 0.5 0.55 0.65 0.75)")
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="the groups whose channels may go, each named after the first "
                             "conv that makes them (default: every group; the run lists "
                             "them; the reference's frozen whitening conv is never one)")
    parser.add_argument("--fine-tune-epochs", type=cli.non_negative_int, default=3,
                        metavar="N", help="epochs of fine-tuning the best pruned model per "
                                          "reduction; 0 skips fine-tuning and timing "
                                          "(default: %(default)s)")
    parser.add_argument("--fine-tune-peak-lr", type=cli.positive_float("--fine-tune-peak-lr"),
                        metavar="LR", help="the fine-tuning's peak learning rate (default: the "
                                           "shared recipe's, common/finetune.py FINE_TUNE)")
    args = parser.parse_args(argv)
    cli.one_model_each(parser, "--flops-reductions", args.flops_reductions,
                       lambda v: f"structured_{reduction_name(v)}")
    return args


def run_settings(args, model_sha256, data_id):
    """Everything that changes this section's numbers: results are keyed by it."""
    from common.finetune import fine_tune_recipe
    peak = {"peak_learning_rate": args.fine_tune_peak_lr} if args.fine_tune_peak_lr else {}
    recipe = fine_tune_recipe(args.fine_tune_epochs, args.batch_size, args.precision, **peak) \
        if args.fine_tune_epochs else None
    keyed = {k: v for k, v in CONFIG.items() if not k.endswith("_timing")}
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, **keyed, "flops_reductions": sorted(args.flops_reductions),
            "layers": args.layers, "fine_tune": recipe}


def prunable(model, path, layers=None):
    """ValueError (one line, naming the file or --layers) for a model with no
    group of conv channels to remove, or --layers that are not groups of it."""
    from common import structured
    names = structured.prunable_convs(model)
    if not names:
        whole = structured.graph(model).whole
        raise ValueError(f"{cli.shown_path(path)}: no conv whose filters can be removed"
                         + "".join(f"; {n}: {why}" for n, why in whole[:3]))
    wrong = [name for name in layers or [] if name not in names]
    if wrong:
        raise ValueError(f"--layers: {', '.join(wrong)}: not a prunable conv of "
                         f"{cli.shown_path(path)}; choose from {', '.join(names)}")


def importance(model, names, images, criteria):
    """Each criterion's score of every filter: dict criterion -> conv -> (f,)
    ("bn_scale" left out where a group has no batch-norm scale)."""
    from common import structured
    scores = {}
    if "l1" in criteria:
        scores["l1"] = structured.l1_norms(model, names)
    if "activation" in criteria:
        scores["activation"] = structured.activation_importance(model, names, images)
    if "bn_scale" in criteria:
        scales = structured.bn_scales(model, names)
        if all(score is not None for score in scales.values()):
            scores["bn_scale"] = scales
    return scores


def measure_pruned(model, keep, splits, images):
    """The model without the filters `keep` leaves out: its validation accuracy
    as pruned and with batch norm re-estimated on the training `images`,
    parameters and FLOPs."""
    from common import measure, structured
    from common.evaluation import accuracy_on, recalibrate_batchnorm
    smaller = structured.remove_filters(model, keep)
    row = {"validation_accuracy": accuracy_on(smaller, splits.validation)}
    recalibrate_batchnorm(smaller, splits.train[0][:images])
    row.update(validation_accuracy_recalibrated=accuracy_on(smaller, splits.validation),
               params=measure.count_params(smaller), flops=measure.count_flops(smaller),
               filters={name: len(indices) for name, indices in keep.items()})
    return smaller, row


def sensitivity_sweep(run, model, scores, splits):
    """Per criterion and layer: validation accuracy (batch norm re-estimated)
    with only that layer keeping each of the sensitivity shares of its filters (its
    best ones), and all of them (share 1). Returns criterion -> conv -> curve."""
    from common import structured
    from common.evaluation import accuracy_on
    done = run.find().get("sensitivity", {})
    todo = [(c, n) for c in scores for n in scores[c] if n not in done.get(c, {})]
    sweep = cli.Sweep(len(todo), "sensitivity", skipped=sum(map(len, scores.values())) - len(todo))
    dense = accuracy_on(model, splits.validation) if todo else None
    sizes = structured.group_sizes(model)
    for criterion, name in todo:
        filters = sizes[name]
        accuracies = [dense]
        for share in run.settings["sensitivity_shares"]:
            keep = structured.keep_indices(scores[criterion],
                                           {name: max(1, round(share * filters))})
            accuracies.append(measure_pruned(model, keep, splits,
                                             run.settings["importance_images"])[1]
                              ["validation_accuracy_recalibrated"])
        curve = {"share": [1.0, *run.settings["sensitivity_shares"]], "accuracy": accuracies}
        run.update(lambda r: r.setdefault("sensitivity", {}).setdefault(
            criterion, {}).update({name: curve}))
        sweep.done(f"{criterion} {name}: " + " ".join(
            f"{s:g}:{a:.3f}" for s, a in zip(curve["share"], accuracies)))
    return run.find()["sensitivity"]


def take_over_screen(run):
    """A new run's sensitivity curves, and the candidates at its reductions,
    copied from a stored run (of its results file, or the repository's) whose
    settings differ only in SCREEN_FREE (same model digest, data, criteria and
    shares); the run names it in "screen_from". Returns that run's label, or None."""
    from common.results import runs_alike, settings_label
    if run.force or run.find().get("sensitivity"):
        return None
    keys = [k for k in run.settings if k not in SCREEN_FREE]
    paths = dict.fromkeys(os.path.abspath(path) for path in (
        run.store.path, os.path.join(cli.REPO_ROOT, "results", RESULTS_FILE)))
    for other in (other for path in paths for other in runs_alike(path, run.settings, keys)):
        if other["settings"] != run.settings and other.get("sensitivity"):
            label = settings_label(other["settings"])
            rows = [row for row in other.get("candidates", [])
                    if row["flops_reduction"] in run.settings["flops_reductions"]]
            run.update(lambda r: r.update(sensitivity=other["sensitivity"], candidates=rows,
                                          screen_from=label))
            print(f"sensitivity and {len(rows)} candidates taken over from run-{label} "
                  f"(the same model, data and screen)")
            return label
    return None


def allocate(model, allocation, scores, curves, flops_fraction):
    """Filters kept per conv under one allocation rule."""
    from common import structured
    if allocation == "uniform":
        return structured.uniform_counts(model, list(scores), flops_fraction)
    if allocation == "global":
        return structured.global_counts(model, scores, flops_fraction)
    return structured.sensitivity_counts(model, curves, flops_fraction)


def screen(run, model, names, scores, curves, splits):
    """Every criterion x allocation at each FLOPs reduction, measured on the
    validation split without training (see `measure_pruned`), a row at a time."""
    from common import structured
    done = {row["key"] for row in run.find().get("candidates", [])}
    todo = [(r, c, a) for r in run.settings["flops_reductions"] for c in scores
            for a in run.settings["allocations"] if f"{reduction_name(r)} {c} {a}" not in done]
    full_flops = structured.flops_after(model, structured.group_sizes(model, names))
    sweep = cli.Sweep(len(todo), "pruned candidate", skipped=len(done))
    for reduction, criterion, allocation in todo:
        counts = allocate(model, allocation, scores[criterion], curves[criterion],
                          1 - reduction)
        _, row = measure_pruned(model, structured.keep_indices(scores[criterion], counts),
                                splits, run.settings["importance_images"])
        row.update(key=f"{reduction_name(reduction)} {criterion} {allocation}",
                   flops_reduction=reduction, criterion=criterion, allocation=allocation,
                   flops_ratio=row["flops"] / full_flops)
        run.upsert("candidates", "key", row)
        sweep.done(f"-{reduction_name(reduction)}% FLOPs, {criterion}, {allocation}: "
                   f"validation {row['validation_accuracy']:.4f}, "
                   f"{row['validation_accuracy_recalibrated']:.4f} batch norm re-estimated")


def fine_tune_best(run, model, scores, splits):
    """Per FLOPs reduction, the candidate best on the validation split (batch
    norm re-estimated), its filters removed, fine-tuned with the original as
    teacher and saved; a stored one whose model file checks out is reused.
    Returns reduction -> the fine-tuned model."""
    from common import evaluation, finetune, models, structured
    chosen = {}
    stored = {row["flops_reduction"]: row for row in run.find().get("finetuned", [])}
    for reduction in sorted(run.settings["flops_reductions"], reverse=True):  # smallest first
        name = f"structured_{reduction_name(reduction)}"
        path = None if run.force else run.verified(stored.get(reduction), name)
        if path:
            chosen[reduction] = models.load_classifier(path)
            print(f"-{reduction_name(reduction)}% FLOPs: fine-tuned already, reusing "
                  f"{cli.shown_path(path)}")
            continue
        best = max((r for r in run.find()["candidates"] if r["flops_reduction"] == reduction),
                   key=lambda r: r["validation_accuracy_recalibrated"])
        print(f"-{reduction_name(reduction)}% FLOPs: fine-tuning {best['criterion']}, "
              f"{best['allocation']} ({best['validation_accuracy_recalibrated']:.4f} on the "
              "validation split, batch norm re-estimated)")
        smaller = structured.remove_filters(model, structured.keep_indices(
            scores[best["criterion"]], best["filters"]))
        evaluation.recalibrate_batchnorm(smaller,
                                         splits.train[0][:run.settings["importance_images"]])
        records = finetune.fine_tune(
            smaller, splits.train, splits.validation, teacher=model, seed=run.settings["seed"],
            backup_dir=os.path.join(run.paths["checkpoints"], f"{name}-{run.label}"),
            **run.settings["fine_tune"])
        row = {**best, "records": records,
               "validation_accuracy_fine_tuned": evaluation.accuracy_on(smaller, splits.validation),
               **run.save_model(smaller, name)}
        run.upsert("finetuned", "flops_reduction", row)
        chosen[reduction] = smaller
    return chosen


def report(run, model, chosen, splits):
    """The report: test accuracy of the original and of each fine-tuned model,
    read once per model file."""
    from common.evaluation import accuracy_on
    if "test_accuracy" not in run.find()["original"]:
        run.update(lambda r: r["original"].update(test_accuracy=accuracy_on(model,
                                                                            splits.test())))
    for row in run.find()["finetuned"]:
        if row["flops_reduction"] in chosen and "test_accuracy" not in row:
            run.upsert("finetuned", "flops_reduction", {
                **row, "test_accuracy": accuracy_on(chosen[row["flops_reduction"]],
                                                    splits.test())})


def timing(run, model, chosen, images):
    """Keras and LiteRT time of the original and each fine-tuned model, timed
    together on this machine (stored timings of the same models reused)."""
    import keras

    from common import deploy, measure
    from common.inference import fold_batchnorm
    candidates = {"original": model, **{f"-{reduction_name(r)}%": m for r, m in chosen.items()}}
    folded = {name: fold_batchnorm(m)[0] for name, m in candidates.items()}
    digests = {"original": run.settings["model_sha256"],
               **{f"-{reduction_name(row['flops_reduction'])}%": row["model_sha256"]
                  for row in run.find()["finetuned"] if row["flops_reduction"] in chosen}}
    keras_timing, litert_timing = CONFIG["keras_timing"], CONFIG["litert_timing"]
    keras_block = run.timing(
        "keras_timings", digests, {**keras_timing, "images": len(images),
                                   "backend": keras.backend.backend(),
                                   "threads": os.cpu_count()},  # the backend's default
        lambda: {"models": measure.keras_timing(folded, images, keras_timing["batch_size"],
                                                keras_timing["repeats"])})

    def litert():
        flatbuffers = dict(zip(folded, deploy.to_flatbuffers(
            [(m, "float32", None, False) for m in folded.values()])))
        models = deploy.latency(flatbuffers, images[:litert_timing["images"]], "original",
                                (litert_timing["threads"],), litert_timing["repeats"])["1"]
        return {"call_overhead": models.pop(deploy.CALL_OVERHEAD), "models": models}
    return keras_block, run.timing("litert_timings", digests, litert_timing, litert)


def plot_figures(run, figures_dir):
    """The figure of one machine's timings: this machine's if it has timed
    these models, else the last machine's; Part 3's Tucker-2 models beside,
    where Part 3 timed them from the same reference on that machine."""
    from common import plots_compression as plots
    keras_block = machine.this_machine(run.get("keras_timings")) or \
        (run.get("keras_timings") or [None])[-1]
    litert_block = keras_block and next(
        (b for b in reversed(run.get("litert_timings") or [])
         if machine.same_machine(b["machine"], keras_block["machine"])), None)
    if not (run.get("finetuned") and litert_block):
        print("part2_structured.png not drawn: no fine-tuned models timed in Keras and "
              "LiteRT on one machine")
        return
    path = os.path.join(figures_dir, "part2_structured.png")
    print("wrote", plots.plot_structured(run, keras_block, litert_block, path,
                                         tucker_points(run, keras_block, figures_dir)))


def tucker_points(run, keras_block, figures_dir):
    """(k, Keras time ratio, test accuracy) of Part 3's fine-tuned models made
    from the same reference and data and timed on the same machine and
    backend at the same batch size, from the results beside `figures_dir`."""
    from common.results import runs_alike
    part3 = os.path.join(os.path.dirname(figures_dir), "results", "part3.json")
    for other in runs_alike(part3, run["settings"]):
        for block in reversed(other.get("timings") or []):
            same = all(block["params"].get(k) == keras_block["params"].get(k)
                       for k in ("batch_size", "backend", "batch_norm_folded"))
            if same and machine.same_machine(block["machine"], keras_block["machine"]):
                return [(row["k"], block["models"][f"k{row['k']}"]["ratio"], row["test_accuracy"])
                        for row in other["sweep"] if f"k{row['k']}" in block["models"]
                        and row.get("test_accuracy") is not None]
    return []


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only:
        return runs.plot_only(RESULTS_FILE, args, plot_figures, SCHEMA)
    run, splits, model_path = runs.start(
        RESULTS_FILE, args, lambda digest, data_id: run_settings(args, digest, data_id), SCHEMA,
        check=lambda model, path: prunable(model, path, args.layers))
    from common import report as tables, structured
    from common.evaluation import accuracy_on
    model = run.model
    names = structured.prunable_convs(model)
    whole = structured.graph(model).whole
    print(f"{len(names)} groups of channels (--layers takes these names): {', '.join(names)}"
          + "".join(f"\n  kept whole at {n}: {why}" for n, why in whole))
    names = args.layers or names
    if "original" not in run.find():
        run.update(lambda r: r.update(original={
            "validation_accuracy": accuracy_on(model, splits.validation)}))
    images = splits.train[0][:run.settings["importance_images"]]
    with cli.Heartbeat(f"scoring each group's channels by {', '.join(run.settings['criteria'])} "
                       f"({len(images):,} training images)"):
        scores = importance(model, names, images, run.settings["criteria"])
    take_over_screen(run)
    curves = sensitivity_sweep(run, model, scores, splits)
    screen(run, model, names, scores, curves, splits)
    if run.settings["fine_tune"]:
        chosen = fine_tune_best(run, model, scores, splits)
        report(run, model, chosen, splits)
        timing(run, model, chosen, splits.validation[0])
    print(tables.part2_structured_tables(run.find()))
    plot_figures(run.find(), run.paths["figures"])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
