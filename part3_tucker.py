"""Part 3: how much accuracy and time does Tucker-2 decomposition of the conv
layers trade on a ~90% CIFAR-10 model?

Each eligible Conv2D (kernel kh x kw x c x f, all but the first) becomes a 1x1
conv c -> R1, a kh x kw core conv R1 -> R2 and a 1x1 conv R2 -> f, with
R1 = ceil(c*k/8) and R2 = ceil(f*k/8). For each k this measures accuracy on
the validation split as decomposed, with batch norm re-estimated and after a
short fine-tune (the shared recipe at Tucker-2's lower peak learning rate,
without a teacher: common.finetune.FOR_TUCKER), then the fine-tuned model's
test accuracy (the report), its parameters, FLOPs and forward time beside
the original's on this machine (study at k = 4: 88.02% vs ~90%, 77% of the
time), and the reconstruction error of one layer against rank.

    python part3_tucker.py --k 4                 # the study's point (~6 min on 2 cores)
    python part3_tucker.py                       # the sweep k = 1..8 (~45 min)
    python part3_tucker.py --k 4 --fine-tune 0   # decomposed, no retraining (~1 min)
    python part3_tucker.py --plot-only           # redraw figures from the JSON

The model is models/reference.keras (of --output-dir, else the committed one);
--model takes any .keras CIFAR-10 classifier. Each k's row goes to
results/part3.json and its model to models/tucker_k<k>.keras of the run's
folder (see common/runs.py); a k done with the same settings is reused, its
model file checked against the row's digest, unless --force.
"""

import os

# TensorFlow is imported inside the functions that need it, so that --help and
# --plot-only answer at once.
from common import cli, machine, runs
from common.results import NUMBER, Map, Nullable

# ---- configuration ---------------------------------------------------------
# Everything that changes this part's numbers, in the run's key
# (`run_settings`) but the k values (each k is a row: more of them extend
# the run) and the timing's parameters (they key each timing).
CONFIG = {
    "k_values": [1, 2, 3, 4, 5, 6, 7, 8],    # k = 8 is full rank: exact up to float error
    # Batch-norm re-estimation after decomposing (the new convs shift every
    # batch norm's input), on 10,000 training images: one pass, ~10 s.
    "recalibration_images": 10_000,
    # Ranks for the reconstruction curves: the study fixes one rank at 64.
    "fixed_rank": 64,
    "rank_grid": [4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256],
    # Forward time in Keras over the validation images: batch 256 keeps both
    # cores busy; batch norms folded into the convs (same outputs;
    # common.inference), as deployed; the median of 7 interleaved rounds,
    # min-max as spread.
    "timing": {"runtime": "keras", "batch_size": 256, "repeats": 7, "batch_norm_folded": True},
}
RESULTS_FILE = "part3.json"
SUMMARY = {"median": NUMBER, "min": NUMBER, "max": NUMBER, "ratio": NUMBER}
SCHEMA = {
    "original": {"validation_accuracy": NUMBER, "params": int, "flops": int,
                 "test_accuracy?": NUMBER},
    "sweep": [{"k": int, "ranks": Map([int]), "params": int, "flops": int,
               "validation_accuracy": NUMBER, "validation_accuracy_recalibrated": NUMBER,
               "validation_accuracy_fine_tuned": Nullable(NUMBER), "model": str,
               "model_sha256": str, "test_accuracy?": NUMBER}],
    "timings": [{"machine": dict, "label": str, "params": dict, "digests": Map(str),
                 "models": Map(SUMMARY)}],
}
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--k", type=cli.int_in_range("k", 1, 8), nargs="+", metavar="K",
                        help="rank fraction(s) k/8 to run, integers 1..8 (default: 1..8)")
    parser.add_argument("--model", metavar="PATH", help=cli.MODEL_HELP.format("decompose"))
    parser.add_argument("--layer", metavar="NAME",
                        help="conv layer for the reconstruction-error figure "
                             "(default: the first with c, f >= 128)")
    parser.add_argument("--fine-tune", type=cli.non_negative_int, default=3, metavar="EPOCHS",
                        help="epochs of fine-tuning each decomposed model; 0: none "
                             "(default: %(default)s)")
    return parser.parse_args(argv)


def run_settings(args, model_sha256, data_id):
    """Everything that changes this part's numbers: results are keyed by it."""
    from common.finetune import fine_tune_recipe, FOR_TUCKER
    recipe = fine_tune_recipe(args.fine_tune, args.batch_size, args.precision, **FOR_TUCKER) \
        if args.fine_tune else None
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, **{k: v for k, v in CONFIG.items() if k not in (
                "k_values", "timing")}, "fine_tune": recipe}


def eligible(model, path, layer_name=None):
    """ValueError (one line, naming the file or --layer) for a model with no conv
    Tucker-2 can replace, or a --layer that is not one."""
    from common.tucker import decomposable_convs
    convs = decomposable_convs(model)
    if not convs:
        raise ValueError(f"{cli.shown_path(path)}: no conv to decompose (Tucker-2 replaces "
                         "a channels-last Conv2D with a kernel larger than 1x1, not the "
                         "first; depthwise and 1x1 convs gain nothing)")
    if layer_name is not None and layer_name not in convs:
        raise ValueError(f"--layer {layer_name!r}: no such decomposable conv; "
                         f"choose from {', '.join(convs)}")


def reconstruction_curves(model, fixed_rank, rank_grid, layer_name=None):
    """Relative error of one conv's Tucker-2 approximation, one rank fixed at 64."""
    import keras

    from common.tucker import decomposable_convs, relative_error
    convs = [model.get_layer(n) for n in decomposable_convs(model)]
    if layer_name is None:   # the first with c, f >= 128, else the widest
        matches = [c for c in convs if min(c.kernel.shape[2:]) >= 128] or \
            sorted(convs, key=lambda c: -min(c.kernel.shape[2:]))
        problem = "no conv to decompose (a Conv2D with a kernel larger than 1x1, not the first)"
    else:
        matches = [c for c in convs if c.name == layer_name]
        problem = (f"--layer {layer_name!r}: no such decomposable conv; "
                   f"choose from {', '.join(c.name for c in convs)}")
    if not matches:
        raise ValueError(problem)
    conv = matches[0]
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    c, f = kernel.shape[2:]
    fixed = min(fixed_rank, c, f)
    r1s, r2s = ([r for r in rank_grid if r <= n] for n in (c, f))
    # Both ranks together, up to full (R1 = c, R2 = f), where the error is 0.
    both = sorted({r for r in rank_grid if r < max(c, f)} | {max(c, f)})
    jobs = [(fixed, r) for r in r2s] + [(r, fixed) for r in r1s] + \
        [(min(r, c), min(r, f)) for r in both]
    print(f"reconstruction error of {conv.name} ({c} -> {f}) at {len(jobs)} rank pairs")
    progress, errors = cli.Sweep(len(jobs), "rank pair"), []
    for ranks in jobs:
        errors.append(relative_error(kernel, ranks))
        progress.done(f"R1, R2 = {ranks[0]}, {ranks[1]}: relative error {errors[-1]:.3f}")
    return {"layer": conv.name, "kernel_shape": list(kernel.shape), "fixed_rank": fixed,
            "r1_fixed_64": {"r2": r2s, "error": errors[:len(r2s)]},
            "r2_fixed_64": {"r1": r1s, "error": errors[len(r2s):len(r2s) + len(r1s)]},
            "equal_ranks": {"rank": both, "error": errors[len(r2s) + len(r1s):]}}


def decompose(original, k, splits, recipe, seed, backup_dir, recalibration_images):
    """The k-decomposed model, batch norm re-estimated and fine-tuned (with a
    recipe; a killed fine-tune resumes from `backup_dir`), and its row:
    accuracy on the validation split at each stage."""
    from common import evaluation, finetune, measure, tucker
    model, ranks = tucker.decompose_model(original, lambda c, f: tucker.tucker_ranks(c, f, k))
    row = {"k": k, "ranks": ranks, "params": measure.count_params(model),
           "flops": measure.count_flops(model),
           "validation_accuracy": evaluation.accuracy_on(model, splits.validation)}
    evaluation.recalibrate_batchnorm(model, splits.train[0][:recalibration_images])
    row["validation_accuracy_recalibrated"] = evaluation.accuracy_on(model, splits.validation)
    row["validation_accuracy_fine_tuned"] = None
    if recipe:
        row["fine_tune_records"] = finetune.fine_tune(
            model, splits.train, splits.validation, teacher=original, seed=seed,
            backup_dir=backup_dir, **recipe)
        row["validation_accuracy_fine_tuned"] = evaluation.accuracy_on(model, splits.validation)
    return model, row


def sweep(run, original, ks, splits):
    """Every k asked for: its stored row and model reused where the model file
    is there as stored (and not --force), else made. Returns k -> model."""
    from common import models
    stored = {row["k"]: row for row in run.find().get("sweep", [])}
    made = {}
    progress = cli.Sweep(len(ks), "k")
    for k in ks:
        path = None if run.force else run.verified(stored.get(k), f"k={k}")
        if path:
            made[k] = models.load_classifier(path)
            progress.done(f"k={k}: done, reusing {cli.shown_path(path)}; --force redoes it")
            continue
        made[k], row = decompose(original, k, splits, run.settings["fine_tune"],
                                 run.settings["seed"], os.path.join(
                                     run.paths["checkpoints"], f"tucker_k{k}-{run.label}"),
                                 run.settings["recalibration_images"])
        row.update(run.save_model(made[k], f"tucker_k{k}"))
        run.upsert("sweep", "k", row)
        progress.done(f"k={k}: validation {row['validation_accuracy']:.4f} as decomposed, "
                      f"{row['validation_accuracy_recalibrated']:.4f} batch norm re-estimated"
                      + (f", {row['validation_accuracy_fine_tuned']:.4f} fine-tuned"
                         if row["validation_accuracy_fine_tuned"] is not None else ""))
    return made


def report(run, original, made, splits):
    """The report: test accuracy of the original and of each model made or
    reused now, read once per model file (stored with its row)."""
    from common.evaluation import accuracy_on
    if "test_accuracy" not in run.find().get("original", {}):
        run.update(lambda r: r["original"].update(test_accuracy=accuracy_on(original,
                                                                            splits.test())))
    for row in run.find()["sweep"]:
        if row["k"] in made and "test_accuracy" not in row:
            run.upsert("sweep", "k", {**row, "test_accuracy": accuracy_on(made[row["k"]],
                                                                         splits.test())})


def timing(run, original, made, images):
    """Forward time of the original and every k model made or reused now,
    timed together on this machine (a stored timing of the same models,
    machine and parameters is reused)."""
    import keras

    from common import measure
    from common.inference import fold_batchnorm
    candidates = {"original": original, **{f"k{k}": made[k] for k in sorted(made)}}
    digests = {"original": run.settings["model_sha256"],
               **{f"k{row['k']}": row["model_sha256"] for row in run.find()["sweep"]
                  if row["k"] in made}}
    params = {**CONFIG["timing"], "images": len(images), "backend": keras.backend.backend(),
              "threads": os.cpu_count()}  # the backend's default: every logical core

    def measure_now():
        print(f"timing {len(candidates)} models side by side in Keras ...")
        return {"models": measure.keras_timing(
            {name: fold_batchnorm(m)[0] for name, m in candidates.items()}, images,
            CONFIG["timing"]["batch_size"], CONFIG["timing"]["repeats"])}
    return run.timing("timings", digests, params, measure_now)


def plot_figures(run, figures_dir):
    from common import plots_compression as plots
    print("wrote", plots.plot_reconstruction_vs_rank(
        run["reconstruction"], os.path.join(figures_dir, "part3_reconstruction_vs_rank.png")))
    if run.get("sweep"):
        print("wrote", plots.plot_accuracy_vs_k(
            run, os.path.join(figures_dir, "part3_accuracy_vs_k.png")))
    block = machine.this_machine(run.get("timings")) or (run.get("timings") or [None])[-1]
    if block:
        print("wrote", plots.plot_forward_time_vs_k(
            run, block, os.path.join(figures_dir, "part3_forward_time_vs_k.png")))


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only:
        return runs.plot_only(RESULTS_FILE, args, plot_figures, SCHEMA)
    run, splits, model_path = runs.start(
        RESULTS_FILE, args, lambda digest, data_id: run_settings(args, digest, data_id), SCHEMA,
        check=lambda model, path: eligible(model, path, args.layer))
    from common import evaluation, measure, report as tables
    original = run.model
    stored = run.find().get("reconstruction", {}).get("layer")
    if stored and args.layer in (None, stored):
        print(f"reconstruction error of {stored}: stored, reused")
    else:                                                # a bad --layer fails here
        curves = reconstruction_curves(original, run.settings["fixed_rank"],
                                       run.settings["rank_grid"], args.layer)
        run.update(lambda r: r.update(reconstruction=curves))
    if "original" not in run.find():
        run.update(lambda r: r.update(original={
            "validation_accuracy": evaluation.accuracy_on(original, splits.validation),
            "params": measure.count_params(original), "flops": measure.count_flops(original)}))
    made = sweep(run, original, sorted(set(args.k or CONFIG["k_values"])), splits)
    report(run, original, made, splits)
    block = timing(run, original, made, splits.validation[0])
    print(tables.part3_table(run.find(), block, study=cli.is_reference(model_path)))
    plot_figures(run.find(), run.paths["figures"])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
