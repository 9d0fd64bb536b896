"""Part 3: how much accuracy and time does Tucker-2 decomposition of the conv
layers trade on a ~90% CIFAR-10 model?

Each eligible Conv2D (kernel kh x kw x c x f, all but the first) becomes a 1x1
conv c -> R1, a kh x kw core conv R1 -> R2 and a 1x1 conv R2 -> f, with
R1 = ceil(c*k/8) and R2 = ceil(f*k/8). For each k this measures test accuracy,
parameters, FLOPs and forward-pass time against the original (study at k = 4:
88.02% vs ~90%, 77% of the time), plus the reconstruction error of one layer
against rank, and optionally accuracy after a short fine-tuning.

    python part3_tucker.py --k 4                 # one k
    python part3_tucker.py                       # the sweep k = 1..8
    python part3_tucker.py --k 4 --fine-tune 3   # and retrain 3 epochs
    python part3_tucker.py --plot-only           # redraw figures from the JSON

The model is models/reference.keras (of --output-dir, else the committed one);
--model takes any .keras CIFAR-10 classifier. Each k's row goes to
results/part3.json, keyed by the settings, and its model to
models/tucker_k<k>.keras; a k done with the same settings is reused unless
--force. Rows whose model file is absent (a fresh clone) are kept, not timed.
"""

import os

from common import cli
from common.data import load_for_run
from common.results import ResultsStore, file_digest, run_metadata, upsert

# ---- configuration ---------------------------------------------------------
K_VALUES = range(1, 9)           # k = 8 is full rank: exact up to float error
TIMING_BATCH_SIZE = 256          # large enough to keep both cores busy
TIMING_REPEATS = 5               # median of 5 interleaved passes; min-max as spread
# Every model is timed as it would be deployed: batch norms folded into the
# conv before them (same outputs; see common.inference), ~3% off each here.
FOLD_BATCHNORM_FOR_TIMING = True
# Batch-norm re-estimation after decomposing (the new convs shift every batch
# norm's input), on 10,000 training images: one pass, ~10 s.
RECALIBRATION_IMAGES = 10_000
# Ranks for the reconstruction curves: the study fixes one rank at 64.
FIXED_RANK = 64
RANK_GRID = (4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
# One-cycle peak, 1/15 of the reference's 0.75: the weights start near a good solution.
FINE_TUNE_LEARNING_RATE = 0.05
FINE_TUNE_BATCH_SIZE = 512
RESULTS_FILE = "part3.json"
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
    parser.add_argument("--fine-tune", type=cli.non_negative_int, default=0, metavar="EPOCHS",
                        help="retrain each decomposed model this many epochs (default: 0)")
    parser.add_argument("--timing-repeats", type=cli.positive_int, default=TIMING_REPEATS,
                        metavar="N", help="timed passes per model (default: %(default)s)")
    return parser.parse_args(argv)


def reconstruction_curves(model, layer_name=None):
    """Relative error of one conv's Tucker-2 approximation, one rank fixed at 64."""
    import keras

    from common.tucker import decomposable_convs, relative_error
    convs = [model.get_layer(n) for n in decomposable_convs(model)]
    if layer_name is None:
        matches = [c for c in convs if min(c.kernel.shape[2:]) >= 128]
        problem = "no conv layer with c, f >= 128 for the reconstruction figure; pick --layer"
    else:
        matches = [c for c in convs if c.name == layer_name]
        problem = (f"--layer {layer_name!r}: no such decomposable conv; "
                   f"choose from {', '.join(c.name for c in convs)}")
    if not matches:
        raise ValueError(problem)
    conv = matches[0]
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    c, f = kernel.shape[2:]
    fixed = min(FIXED_RANK, c, f)
    r1s, r2s = ([r for r in RANK_GRID if r <= n] for n in (c, f))
    # Both ranks together, up to full (R1 = c, R2 = f), where the error is 0.
    both = sorted({r for r in RANK_GRID if r < max(c, f)} | {max(c, f)})
    return {"layer": conv.name, "kernel_shape": list(kernel.shape), "fixed_rank": fixed,
            "r1_fixed_64": {"r2": r2s, "error": [relative_error(kernel, (fixed, r)) for r in r2s]},
            "r2_fixed_64": {"r1": r1s, "error": [relative_error(kernel, (r, fixed)) for r in r1s]},
            "equal_ranks": {"rank": both, "error": [
                relative_error(kernel, (min(r, c), min(r, f))) for r in both]}}


def run_settings(args, model_sha256, data_id):
    """Everything that changes this part's numbers: results are keyed by it."""
    from common import precision
    fine_tune = {"epochs": args.fine_tune, "precision": precision.resolve(args.precision),
                 "batch_size": args.batch_size or FINE_TUNE_BATCH_SIZE,
                 "peak_learning_rate": FINE_TUNE_LEARNING_RATE} if args.fine_tune else None
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, "fine_tune": fine_tune}


def plot_figures(run, figures_dir):
    from common import plots
    figures = {"part3_reconstruction_vs_rank.png":
               lambda p: plots.plot_reconstruction_vs_rank(run["reconstruction"], p)}
    if run.get("sweep"):
        figures["part3_accuracy_vs_k.png"] = lambda p: plots.plot_accuracy_vs_k(run, p)
        if run.get("timing"):
            figures["part3_forward_time_vs_k.png"] = \
                lambda p: plots.plot_forward_time_vs_k(run, p)
    for filename, plot in figures.items():
        print("wrote", plot(os.path.join(figures_dir, filename)))


def print_row(label, accuracy, params, flops, time_ratio=None, flops_ratio=None):
    ratios = "" if time_ratio is None else f"   time x{time_ratio:.3f}  FLOPs x{flops_ratio:.3f}"
    print(f"{label:>10}  acc {accuracy:.4f}  params {params:>9,}  MFLOPs {flops / 1e6:8.1f}{ratios}")


def decompose_and_measure(original, k, train, test, args, settings):
    """The k-decomposed model (batch norm re-estimated; fine-tuned if set) and its row."""
    from common import measure, training, tucker
    model, ranks = tucker.decompose_model(original, lambda c, f: tucker.tucker_ranks(c, f, k))
    fine_tune = settings["fine_tune"] or {}
    row = {"k": k, "ranks": ranks, "test_accuracy": training.test_accuracy(model, test),
           "params": measure.count_params(model), "flops": measure.count_flops(model),
           "fine_tune_epochs": fine_tune.get("epochs", 0),
           "fine_tune_precision": fine_tune.get("precision"), "fine_tuned_test_accuracy": None}
    # Fine-tuning (if any) starts from the re-estimated statistics.
    training.recalibrate_batchnorm(model, train[0][:RECALIBRATION_IMAGES])
    row["test_accuracy_recalibrated"] = training.test_accuracy(model, test)
    print_row(f"k={k}", row["test_accuracy"], row["params"], row["flops"])
    print(f"{'':>10}  batch norm re-estimated: acc {row['test_accuracy_recalibrated']:.4f}")
    if fine_tune:
        row["fine_tune_records"] = training.fine_tune(
            model, train, test, epochs=fine_tune["epochs"], batch_size=fine_tune["batch_size"],
            peak_learning_rate=fine_tune["peak_learning_rate"],
            precision=fine_tune["precision"], seed=args.seed)
        row["fine_tuned_test_accuracy"] = training.test_accuracy(model, test)
        print(f"{'':>10}  after {fine_tune['epochs']} epochs of fine-tuning: "
              f"acc {row['fine_tuned_test_accuracy']:.4f}")
    return model, row


def time_side_by_side(original, decomposed, test, repeats, seed):
    """Forward seconds of the original and each decomposed model, timed in one
    interleaved run: time ratios are only fair between models timed together."""
    from common import measure
    from common.inference import fold_batchnorm
    print(f"timing {len(decomposed) + 1} models side by side: a warm-up, {repeats} rounds ...")
    candidates = {"original": original, **{f"k{k}": decomposed[k] for k in sorted(decomposed)}}
    if FOLD_BATCHNORM_FOR_TIMING:
        candidates = {name: fold_batchnorm(model)[0] for name, model in candidates.items()}
    seconds = measure.time_forward(candidates, test[0], batch_size=TIMING_BATCH_SIZE,
                                   repeats=repeats, seed=seed, progress=True)
    return {name: measure.summarize_seconds(s) for name, s in seconds.items()}


def main(argv=None):
    args = parse_args(argv)
    paths = cli.output_paths(args.output_dir)
    store = ResultsStore(os.path.join(paths["results"], RESULTS_FILE))
    if args.plot_only:
        return cli.plot_every_run(store, paths["figures"], plot_figures)
    model_path = cli.model_path(args.model, args.output_dir)
    train, test, source, data_id = load_for_run(args.data_dir, args.train_limit)
    cli.load_backend()
    from common import measure, models, training
    original = models.load_classifier(model_path)
    reconstruction = reconstruction_curves(original, args.layer)  # a bad --layer fails here
    settings = run_settings(args, file_digest(model_path), data_id)
    cli.back_up_if_forced(store, settings, args.force)
    stored = {} if args.force else store.find(settings) or {}
    if stored.get("reconstruction", {}).get("layer") == reconstruction["layer"]:
        reconstruction = stored["reconstruction"]  # kept as stored, not re-rounded
    run = store.update(settings, lambda run: run.update(reconstruction=reconstruction),
                       meta={**run_metadata(source), "model": cli.shown_path(model_path)})

    original_row = {"test_accuracy": training.test_accuracy(original, test),
                    "params": measure.count_params(original), "flops": measure.count_flops(original)}
    print_row("original", *original_row.values())
    sweep = {row["k"]: row for row in run.get("sweep", [])}
    wanted = set(args.k or K_VALUES)
    decomposed = {}  # k -> model: the k run now, and stored rows whose model file is there
    progress = cli.Sweep(len(wanted), "k")
    for k in sorted(wanted | set(sweep)):
        model_file = os.path.join(paths["models"], f"tucker_k{k}.keras")
        row = sweep.get(k)
        kept = (row or {}).get("model_sha256")  # the digest of the row's model file
        if os.path.exists(model_file) and file_digest(model_file) == kept \
                and not (args.force and k in wanted):
            decomposed[k] = models.load_classifier(model_file)
            if k in wanted:
                progress.done(f"k={k}: done, reusing {model_file}; --force redoes it")
            continue
        if k not in wanted:
            continue  # a stored row without its model: kept as it is, not timed
        if row is not None and not args.force:
            print(f"k={k}: no model file {model_file} of the stored row; re-making both")
        decomposed[k], row = decompose_and_measure(original, k, train, test, args, settings)
        decomposed[k].save(model_file)
        row["model_sha256"] = file_digest(model_file)
        store.update(settings, lambda run, row=row: run.update(
            sweep=upsert(run.get("sweep", []), "k", row)))
        progress.done(f"k={k}: stored")

    seconds = time_side_by_side(original, decomposed, test, args.timing_repeats, args.seed)
    timing = {"batch_size": TIMING_BATCH_SIZE, "repeats": args.timing_repeats,
              "images": len(test[0]), "backend": run["meta"]["keras_backend"],
              "batch_norm_folded": FOLD_BATCHNORM_FOR_TIMING, "timed": sorted(decomposed)}

    def record_timing(run):
        run.update(original={**original_row, "forward_seconds": seconds["original"]}, timing=timing)
        for row in (r for r in run.get("sweep", []) if r["k"] in decomposed):
            row["forward_seconds"] = seconds[f"k{row['k']}"]
            row["time_ratio"] = row["forward_seconds"]["median"] / seconds["original"]["median"]
            row["flops_ratio"] = row["flops"] / original_row["flops"]
            row["params_ratio"] = row["params"] / original_row["params"]
            print_row(f"k={row['k']}", row["fine_tuned_test_accuracy"] or row["test_accuracy"],
                      row["params"], row["flops"], row["time_ratio"], row["flops_ratio"])
    run = store.update(settings, record_timing)
    plot_figures(run, store.figures_dir(paths["figures"], settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
