"""Part 2: how much of a ~90% CIFAR-10 CNN can be pruned away, layer by layer and
as a whole, and what does pruning really save?

As in the study, the smallest-|w| fraction of one layer's kernel is zeroed at a
time (no retraining) and accuracy is plotted against the prune rate for every
Conv2D and Dense layer. Then it answers the study's two drawbacks: one global
magnitude threshold against the same rate in every layer; winning the
accuracy back, first without training (batch-norm statistics re-estimated,
kept weights refitted by least squares), then by fine-tuning with the dense
model as teacher while the pruning tightens to its final masks; and the bytes
a pruned model takes on disk, dense, gzipped and in a sparse format. Every
sweep is measured on the validation split; each fine-tuned model is reported
once on the test set.

    python part2_prune.py                              # everything (~50 min on 2 cores)
    python part2_prune.py --layers block1_conv1 --rates 0 0.5 0.9 --sparsities 0.5 0.9 \\
        --fine-tune-epochs 0                           # quick (1.6 min, AMD EPYC)
    python part2_prune.py --plot-only                  # redraw figures from the JSON

Whole filters removed instead (a smaller, faster dense network): part2_structured.py.

The model is models/reference.keras of --output-dir, else the repository's
(committed; made by `python part1_cnn.py --experiments reference`); --model
takes any .keras CIFAR-10 classifier. Results go to results/part2.json as each
piece finishes, keyed by the settings (model and data digests, limits, seed,
rates, fine-tuning recipe); a rerun with the same settings skips finished
pieces unless --force. Each fine-tuned model is saved as
models/pruned_<percent>.keras of the run's folder (see common/runs.py); a
stored row whose model file is absent or changed is made again.
"""

import functools
import os
import tempfile

# TensorFlow is imported inside the functions that need it, so that --help and
# --plot-only answer at once.
from common import cli, runs
from common.results import NUMBER, Map, runs_alike

# ---- configuration ---------------------------------------------------------
# Everything that changes this part's numbers, in the run's key
# (`run_settings`) but the sparsities fine-tuned at (each is a row).
CONFIG = {
    # The study's rates (--rates), plus 95% and 99% where deep layers finally break.
    "rates": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
    # Overall sparsities for global vs uniform pruning (--sparsities).
    "sparsities": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98],
    # Batch-norm re-estimation after pruning: pruning shifts the statistics of
    # every layer's output, and 10,000 training images (~10 s) re-measure them.
    "recalibration_images": 10_000,
    # Training-free repair, measured beside fine-tuning: the kept weights of
    # each pruned layer refitted by least squares to reproduce the dense
    # layer's output (pruning.refit_kept_weights) on 2,000 training images: at
    # least 18,000 rows (block3_conv2 sees 3x3 maps) for at most 2,304 inputs
    # per filter (3x3x256).
    "refit_images": 2_000,
    # Fine-tuning (~6 min per sparsity on 2 cores): 50-95%, and 85% between the
    # knee of the global curve (80%) and the target (90%).
    "fine_tune_sparsities": [0.5, 0.8, 0.85, 0.9, 0.95],
    # Gradual pruning inside the fine-tuning (pruning.GradualPruning): from
    # twice the final share of weights (90% sparse starts at 80%) to the final
    # masks over the first half epoch, re-chosen every 5 steps; checked against
    # pruning in one shot on the validation split (results/probes.json
    # "fine_tune_recipe").
    "gradual": {"start_kept_factor": 2, "ramp_epochs": 0.5, "mask_every": 5},
}
RESULTS_FILE = "part2.json"
SIZES = {"keras_bytes": int, "gzip_bytes": int, "sparse_bytes": int}
SCHEMA = {
    "dense": {"validation_accuracy": NUMBER, "params": int, "sizes": SIZES,
              "test_accuracy?": NUMBER},
    "layer_sensitivity": Map({"index": int, "shape": [int], "prune_rates": [NUMBER],
                              "validation_accuracy": [NUMBER]}),
    "global": {"sparsity": [NUMBER], "validation_accuracy": [NUMBER],
               "validation_accuracy_recalibrated": [NUMBER], "nonzero_params": [int]},
    "uniform": {"sparsity": [NUMBER], "validation_accuracy": [NUMBER],
                "validation_accuracy_recalibrated": [NUMBER], "nonzero_params": [int]},
    "finetune": [{"sparsity": NUMBER, "validation_accuracy_pruned": NUMBER,
                  "validation_accuracy_recalibrated": NUMBER,
                  "validation_accuracy_refitted": NUMBER,
                  "validation_accuracy_fine_tuned": NUMBER, "nonzero_params": int,
                  "model": str, "model_sha256": str, "test_accuracy?": NUMBER, **SIZES}],
}
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--model", metavar="PATH", help=cli.MODEL_HELP.format("prune"))
    parser.add_argument("--rates", type=cli.unit_fraction("rate"), nargs="+", metavar="RATE",
                        default=CONFIG["rates"], help="prune rates for the per-layer "
                        "sensitivity, each in [0, 1) (default: 0, 0.1, ..., 0.9, 0.95, 0.99)")
    parser.add_argument("--sparsities", type=cli.unit_fraction("sparsity"), nargs="+",
                        metavar="S", default=CONFIG["sparsities"],
                        help="overall sparsities of the global vs uniform sweeps "
                             "(default: 0.1, ..., 0.9, 0.95, 0.98; ~20 s each)")
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="layers for the per-layer sensitivity (default: every "
                             "Conv2D and Dense layer)")
    parser.add_argument("--fine-tune-sparsities", type=cli.open_fraction("sparsity"),
                        nargs="+", metavar="S", default=CONFIG["fine_tune_sparsities"],
                        help="sparsities to fine-tune at, each in (0, 1) (default: 0.5, "
                             "0.8, 0.85, 0.9, 0.95; ~6 min each)")
    parser.add_argument("--fine-tune-epochs", "--epochs", type=cli.non_negative_int,
                        default=3, metavar="N",
                        help="epochs of fine-tuning (pruning gradually, then with fixed "
                             "masks); 0 skips it (default: %(default)s)")
    args = parser.parse_args(argv)
    cli.one_model_each(parser, "--fine-tune-sparsities", args.fine_tune_sparsities,
                       lambda v: f"pruned_{sparsity_name(v)}")
    return args


def sparsity_name(sparsity):
    """"90" for 0.9, "90.5" for 0.905: a sparsity's name in files and keys."""
    return f"{100 * sparsity:g}"


def run_settings(args, model_sha256, data_id):
    """Everything that changes this part's numbers: results are keyed by it."""
    from common.finetune import fine_tune_recipe
    recipe = fine_tune_recipe(args.fine_tune_epochs, args.batch_size, args.precision)
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, "rates": list(args.rates), "sparsities": list(args.sparsities),
            "recalibration_images": CONFIG["recalibration_images"],
            "refit_images": CONFIG["refit_images"],
            "fine_tune": {**recipe, "gradual": CONFIG["gradual"]} if args.fine_tune_epochs
            else None}


def layer_sensitivity(run, model, names, rates, validation):
    """Per layer: validation accuracy with only that layer pruned at each rate,
    a layer at a time into the run (finished layers skipped)."""
    from common import pruning
    from common.evaluation import accuracy_on
    done = run.find().get("layer_sensitivity", {})
    chosen = [(i, layer) for i, layer in enumerate(pruning.prunable_layers(model), start=1)
              if layer.name in names]
    todo = [(i, layer) for i, layer in chosen if layer.name not in done]
    sweep = cli.Sweep(len(todo), "layer sensitivity", skipped=len(chosen) - len(todo))
    for index, layer in todo:
        kernel = pruning.kernels_of(model, {layer.name})[layer.name]
        accuracies = []
        for rate in rates:
            with pruning.pruned(model, {layer.name: pruning.magnitude_mask(kernel, rate)}):
                accuracies.append(accuracy_on(model, validation))
        run.put("layer_sensitivity", layer.name, {
            "index": index, "shape": list(kernel.shape), "prune_rates": list(rates),
            "validation_accuracy": accuracies})
        sweep.done(f"{index}: {layer.name} {kernel.shape}: " +
                   " ".join(f"{r:g}:{a:.3f}" for r, a in zip(rates, accuracies)))


def masks_at(model, kind, sparsity):
    from common import pruning
    kernels = pruning.kernels_of(model)
    if kind == "global":
        return pruning.global_masks(kernels, sparsity)
    return pruning.uniform_masks(kernels, sparsity)


def accuracy_after(model, validation, *steps):
    """Validation accuracy after applying `steps` (functions that change the
    model in place) in order; every weight of the model is restored afterwards."""
    from common.evaluation import accuracy_on
    saved = model.get_weights()
    try:
        for step in steps:
            step(model)
        return accuracy_on(model, validation)
    finally:
        model.set_weights(saved)


def sparsity_curve(run, model, kind, splits):
    """Validation accuracy (as pruned, and with batch norm re-estimated) and
    non-zero weights against overall sparsity, global or uniform, stored a
    sparsity at a time; a curve of the same sparsities resumes after its last."""
    from common import pruning
    sparsities = run.settings["sparsities"]
    recalibration = run.settings["recalibration_images"]
    columns = ("validation_accuracy", "validation_accuracy_recalibrated", "nonzero_params")
    curve = run.find().get(kind) or {"sparsity": sparsities, **{c: [] for c in columns}}
    todo = sparsities[len(curve["validation_accuracy_recalibrated"]):]
    sweep = cli.Sweep(len(todo), f"{kind} sweep", skipped=len(sparsities) - len(todo))
    for s in todo:
        masks = masks_at(model, kind, s)
        pruned, nonzero = pruning.pruned_accuracy(model, masks, splits.validation)
        recalibrated, _ = pruning.pruned_accuracy(model, masks, splits.validation,
                                                  splits.train[0][:recalibration])
        for column, value in zip(columns, (pruned, recalibrated, nonzero)):
            curve[column].append(value)
        run.update(lambda r: r.update({kind: curve}))
        sweep.done(f"{kind} {s:.2f}: {pruned:.4f}, {recalibrated:.4f} batch norm re-estimated")


def fine_tune_at(run, model_path, sparsity, splits):
    """Prune a fresh copy globally to `sparsity` and re-estimate its batch
    norm; measure what a least-squares refit of the kept weights would add
    (on the side). Then fine-tune from the dense weights, pruned gradually to
    `sparsity` (`pruning.fine_tune_pruned`), the dense model as teacher; save
    it and measure its size. Every accuracy on the validation split."""
    from common import evaluation, measure, models, pruning
    from common.structured import flattened
    model = flattened(models.load_classifier(model_path))
    dense_weights, dense_kernels = model.get_weights(), pruning.kernels_of(model)
    masks = masks_at(model, "global", sparsity)
    pruning.apply_masks(model, masks)
    pruned = evaluation.accuracy_on(model, splits.validation)
    recalibration = run.settings["recalibration_images"]
    evaluation.recalibrate_batchnorm(model, splits.train[0][:recalibration])
    recalibrated = evaluation.accuracy_on(model, splits.validation)
    refitted = accuracy_after(
        model, splits.validation,
        lambda m: pruning.refit_kept_weights(m, masks, dense_kernels,
                                             splits.train[0][:run.settings["refit_images"]]),
        lambda m: evaluation.recalibrate_batchnorm(m, splits.train[0][:recalibration]))
    model.set_weights(dense_weights)
    recipe = {k: v for k, v in run.settings["fine_tune"].items() if k != "gradual"}
    name = f"pruned_{sparsity_name(sparsity)}"
    records = pruning.fine_tune_pruned(
        model, flattened(models.load_classifier(model_path)), sparsity, splits.train, splits.validation,
        recipe, run.settings["fine_tune"]["gradual"], run.settings["seed"],
        backup_dir=os.path.join(run.paths["checkpoints"], f"{name}-{run.label}"))
    row = {"sparsity": sparsity, "measured_sparsity": pruning.sparsity(model),
           "validation_accuracy_pruned": pruned, "validation_accuracy_recalibrated": recalibrated,
           "validation_accuracy_refitted": refitted,
           "validation_accuracy_fine_tuned": evaluation.accuracy_on(model, splits.validation),
           "nonzero_params": measure.count_nonzero_params(model), "records": records,
           **pruning.model_sizes(model, run.model_file(name)), **run.save_model(model, name)}
    print(f"global {sparsity:.2f}: validation {pruned:.4f} -> {recalibrated:.4f} batch norm "
          f"re-estimated -> {refitted:.4f} least-squares refit; "
          f"{row['validation_accuracy_fine_tuned']:.4f} fine-tuned; "
          f"{row['keras_bytes']:,} B .keras, {row['gzip_bytes']:,} B gzip, "
          f"{row['sparse_bytes']:,} B sparse")
    return model, row


def fine_tune_all(run, model_path, sparsities, splits):
    """Each sparsity asked for: its stored model reused where its file checks
    out (and not --force), else fine-tuned. Returns sparsity -> model."""
    from common import models
    stored = {row["sparsity"]: row for row in run.find().get("finetune", [])}
    made = {}
    for i, sparsity in enumerate(sparsities, start=1):
        what = f"pruned_{sparsity_name(sparsity)}"
        path = None if run.force else run.verified(stored.get(sparsity), what)
        if path:
            print(f"fine-tuning {i}/{len(sparsities)}: {sparsity:.0%} done, reusing "
                  f"{cli.shown_path(path)}")
            made[sparsity] = models.load_classifier(path)
            continue
        print(f"fine-tuning {i}/{len(sparsities)}: {sparsity:.0%} sparse (~6 min on 2 cores)")
        made[sparsity], row = fine_tune_at(run, model_path, sparsity, splits)
        run.upsert("finetune", "sparsity", row)
    return made


def report(run, model, made, splits):
    """The report: test accuracy of the dense model and of each fine-tuned
    model, read once per model file."""
    from common.evaluation import accuracy_on
    if "test_accuracy" not in run.find()["dense"]:
        run.update(lambda r: r["dense"].update(test_accuracy=accuracy_on(model, splits.test())))
    for row in run.find().get("finetune", []):
        if row["sparsity"] in made and "test_accuracy" not in row:
            run.upsert("finetune", "sparsity", {
                **row, "test_accuracy": accuracy_on(made[row["sparsity"]], splits.test())})


def plot_figures(run, figures_dir, results_dir):
    from common import plots_compression as plots
    path = functools.partial(os.path.join, figures_dir)
    if run.get("layer_sensitivity"):
        print("wrote", plots.plot_layer_sensitivity(run, path("part2_layer_sensitivity.png")))
    if run.get("global") and run.get("uniform"):
        print("wrote", plots.plot_global_vs_uniform(run, path("part2_global_vs_uniform.png")))
    if run.get("finetune"):
        print("wrote", plots.plot_finetune(run, path("part2_finetune.png")))
    # Pruning, Tucker-2 and filter removal on one model and one data set only.
    others = {part: runs_alike(os.path.join(results_dir, f"{part}.json"), run["settings"],
                               ("model_sha256", "data_sha256", "validation_sha256"))
              for part in ("part3", "part2_structured")}
    if others["part3"] and run.get("global"):
        print("wrote", plots.plot_compression_tradeoff(
            run, others["part3"][0], path("compression_tradeoff.png"),
            (others["part2_structured"] or [None])[0]))


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only:
        results_dir = os.path.join(args.output_dir or cli.REPO_ROOT, "results")
        return runs.plot_only(RESULTS_FILE, args, functools.partial(
            plot_figures, results_dir=results_dir), SCHEMA)
    run, splits, model_path = runs.start(
        RESULTS_FILE, args, lambda digest, data_id: run_settings(args, digest, data_id), SCHEMA)
    from common import measure, pruning, report as tables
    from common.evaluation import accuracy_on
    model = run.model
    names = [layer.name for layer in pruning.prunable_layers(model)]
    unknown = sorted(set(args.layers or []) - set(names))
    if unknown:
        raise ValueError(f"--layers: no Conv2D or Dense layer named {', '.join(unknown)}; "
                         f"choose from {', '.join(names)}")
    if "dense" not in run.find():
        with tempfile.TemporaryDirectory() as folder:   # the dense model is --model itself
            sizes = pruning.model_sizes(model, os.path.join(folder, "dense.keras"))
        run.update(lambda r: r.update(dense={
            "validation_accuracy": accuracy_on(model, splits.validation),
            "params": measure.count_params(model), "sizes": sizes}))
    layer_sensitivity(run, model, args.layers or names, args.rates, splits.validation)
    for kind in ("global", "uniform"):
        sparsity_curve(run, model, kind, splits)
    made = fine_tune_all(run, model_path, args.fine_tune_sparsities
                         if run.settings["fine_tune"] else [], splits)
    report(run, model, made, splits)
    print(tables.part2_tables(run.find()))
    plot_figures(run.find(), run.paths["figures"], run.paths["results"])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
