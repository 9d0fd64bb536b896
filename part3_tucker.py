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

The model is models/reference.keras (made by `python part1_cnn.py --experiments
reference`, committed); --model takes any .keras CIFAR-10 classifier. Results go
to results/part3.json after each k; a k already there with the same settings is
skipped unless --force.
"""

import os

from common import cli
from common.results import file_digest, load_matching, read_json, run_metadata, write_json

# ---- configuration ---------------------------------------------------------
DEFAULT_MODEL = os.path.join("models", "reference.keras")
K_VALUES = range(1, 9)           # k = 8 is full rank: exact up to float error
TIMING_BATCH_SIZE = 256          # large enough to keep both cores busy
TIMING_REPEATS = 5               # median of 5 interleaved passes; min-max as spread
# Every model is timed as it would be deployed: batch norms folded into the
# conv before them (same outputs; see common.inference), ~3% off each here.
FOLD_BATCHNORM_FOR_TIMING = True
# Batch-norm re-estimation after decomposing, before any fine-tuning.
RECALIBRATION_IMAGES = 10_000
# Ranks for the reconstruction curves: the study fixes one rank at 64.
FIXED_RANK = 64
RANK_GRID = (4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
FINE_TUNE_LEARNING_RATE = 0.05   # peak of the one-cycle; the reference's was 0.75
FINE_TUNE_BATCH_SIZE = 512
RESULTS_FILE = "part3.json"
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--k", type=cli.int_in_range("k", 1, 8), nargs="+", metavar="K",
                        help="rank fraction(s) k/8 to run, integers 1..8 (default: 1..8)")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help=f".keras classifier to decompose (default: {DEFAULT_MODEL})")
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
        wide = [c for c in convs if min(c.kernel.shape[2:]) >= 128]
        if not wide:
            raise ValueError("no conv layer with c, f >= 128 for the reconstruction "
                             "figure; pick one with --layer")
        conv = wide[0]
    else:
        matches = [c for c in convs if c.name == layer_name]
        if not matches:
            raise ValueError(f"--layer {layer_name!r}: no such decomposable conv; "
                             f"choose from {', '.join(c.name for c in convs)}")
        conv = matches[0]
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    c, f = kernel.shape[2:]
    fixed = min(FIXED_RANK, c, f)
    r2s = [r for r in RANK_GRID if r <= f]
    r1s = [r for r in RANK_GRID if r <= c]
    return {"layer": conv.name, "kernel_shape": list(kernel.shape), "fixed_rank": fixed,
            "r1_fixed_64": {"r2": r2s, "error": [relative_error(kernel, (fixed, r)) for r in r2s]},
            "r2_fixed_64": {"r1": r1s, "error": [relative_error(kernel, (r, fixed)) for r in r1s]}}


def recalibrate_and_test(model, test, images):
    """Re-estimate `model`'s batch-norm statistics on `images` (in place: the
    decomposed convs change what each batch norm sees); its test accuracy."""
    from common.training import recalibrate_batchnorm, test_accuracy
    recalibrate_batchnorm(model, images)
    return test_accuracy(model, test)


def plot_figures(results, figures_dir):
    from common import plots
    figures = {"part3_reconstruction_vs_rank.png":
               lambda p: plots.plot_reconstruction_vs_rank(results["reconstruction"], p)}
    if results.get("sweep"):
        figures["part3_accuracy_vs_k.png"] = lambda p: plots.plot_accuracy_vs_k(results, p)
        if all("forward_seconds" in r for r in results["sweep"]):
            figures["part3_forward_time_vs_k.png"] = \
                lambda p: plots.plot_forward_time_vs_k(results, p)
    for filename, plot in figures.items():
        print("wrote", plot(os.path.join(figures_dir, filename)))


def print_row(label, accuracy, params, flops, time_ratio=None, flops_ratio=None):
    ratios = "" if time_ratio is None else f"   time x{time_ratio:.3f}  FLOPs x{flops_ratio:.3f}"
    print(f"{label:>10}  acc {accuracy:.4f}  params {params:>9,}  MFLOPs {flops / 1e6:8.1f}{ratios}")


def main(argv=None):
    args = parse_args(argv)
    paths = cli.output_paths(args.output_dir)
    results_path = os.path.join(paths["results"], RESULTS_FILE)
    if args.plot_only:
        results = read_json(results_path)
        plot_figures(results, paths["figures"])
        return 0

    from common import measure, models, precision, training, tucker
    from common.data import load_cifar10, preprocess
    from common.inference import fold_batchnorm
    model_path = args.model or os.path.join(args.output_dir, DEFAULT_MODEL)
    original = models.load_classifier(
        model_path, hint="" if args.model else
        "; make it with: python part1_cnn.py --experiments reference")
    if args.layer is not None:  # fail on a bad name before any slow work
        reconstruction = reconstruction_curves(original, args.layer)
    (x_train, y_train), test, source = load_cifar10(args.data_dir)
    test = preprocess(*test)
    train = preprocess(x_train[:args.train_limit], y_train[:args.train_limit])
    recalibration_images = train[0][:RECALIBRATION_IMAGES]

    settings = {"model": os.path.relpath(model_path, args.output_dir),
                "model_sha256": file_digest(model_path),
                "train_limit": args.train_limit, "seed": args.seed}
    results = load_matching(results_path, settings, fresh=args.force)
    results["meta"] = run_metadata(source)
    if args.layer is None:
        reconstruction = reconstruction_curves(original)
    results["reconstruction"] = reconstruction
    write_json(results_path, results)

    original_row = {"test_accuracy": training.test_accuracy(original, test),
                    "params": measure.count_params(original),
                    "flops": measure.count_flops(original)}
    print_row("original", original_row["test_accuracy"], original_row["params"],
              original_row["flops"])
    sweep = {row["k"]: row for row in results.get("sweep", [])}
    fine_tune_precision = precision.resolve(args.precision) if args.fine_tune else None
    decomposed = {}
    for k in args.k or K_VALUES:
        model_file = os.path.join(paths["models"], f"tucker_k{k}.keras")
        done = k in sweep and sweep[k]["fine_tune_epochs"] == args.fine_tune \
            and sweep[k].get("fine_tune_precision") == fine_tune_precision \
            and os.path.exists(model_file)
        if done and "test_accuracy_recalibrated" in sweep[k]:
            print(f"k={k}: done, reusing {model_file}; --force redoes it")
            continue
        model, ranks = tucker.decompose_model(
            original, lambda c, f, k=k: tucker.tucker_ranks(c, f, k))
        if done:  # a row from before batch-norm re-estimation: add just that
            sweep[k]["test_accuracy_recalibrated"] = recalibrate_and_test(
                model, test, recalibration_images)
            write_json(results_path, results)
            continue
        row = {"k": k, "ranks": ranks, "test_accuracy": training.test_accuracy(model, test),
               "params": measure.count_params(model), "flops": measure.count_flops(model),
               "fine_tune_epochs": args.fine_tune, "fine_tune_precision": fine_tune_precision,
               "fine_tuned_test_accuracy": None}
        # Fine-tuning (if any) starts from the re-estimated statistics.
        row["test_accuracy_recalibrated"] = recalibrate_and_test(model, test,
                                                                  recalibration_images)
        print_row(f"k={k}", row["test_accuracy"], row["params"], row["flops"])
        print(f"{'':>10}  batch norm re-estimated: acc {row['test_accuracy_recalibrated']:.4f}")
        if args.fine_tune:
            row["fine_tune_records"] = training.fine_tune(
                model, train, test, epochs=args.fine_tune,
                batch_size=args.batch_size or FINE_TUNE_BATCH_SIZE,
                peak_learning_rate=FINE_TUNE_LEARNING_RATE, precision=fine_tune_precision,
                seed=args.seed)
            row["fine_tuned_test_accuracy"] = training.test_accuracy(model, test)
            print(f"{'':>10}  after {args.fine_tune} epochs of fine-tuning: "
                  f"acc {row['fine_tuned_test_accuracy']:.4f}")
        model.save(model_file)
        decomposed[k] = model
        sweep[k] = row
        results["sweep"] = [sweep[key] for key in sorted(sweep)]
        write_json(results_path, results)

    # Time the original and every model of the sweep in one interleaved run:
    # time ratios are only fair between models timed together.
    for k in sweep:
        if k not in decomposed:
            decomposed[k] = models.load_classifier(
                os.path.join(paths["models"], f"tucker_k{k}.keras"))
    print(f"timing {len(decomposed) + 1} models, {args.timing_repeats} passes each ...")
    candidates = {"original": original, **{f"k{k}": decomposed[k] for k in sorted(decomposed)}}
    if FOLD_BATCHNORM_FOR_TIMING:
        candidates = {name: fold_batchnorm(model)[0] for name, model in candidates.items()}
    seconds = measure.time_forward(candidates, test[0], batch_size=TIMING_BATCH_SIZE,
                                   repeats=args.timing_repeats, seed=args.seed)
    original_row["forward_seconds"] = measure.summarize_seconds(seconds["original"])
    results["original"] = original_row
    results["timing"] = {"batch_size": TIMING_BATCH_SIZE, "repeats": args.timing_repeats,
                         "images": len(test[0]), "backend": results["meta"]["keras_backend"],
                         "batch_norm_folded": FOLD_BATCHNORM_FOR_TIMING}
    base_time = original_row["forward_seconds"]["median"]
    for k in sorted(sweep):
        row = sweep[k]
        row["forward_seconds"] = measure.summarize_seconds(seconds[f"k{k}"])
        row["time_ratio"] = row["forward_seconds"]["median"] / base_time
        row["flops_ratio"] = row["flops"] / original_row["flops"]
        row["params_ratio"] = row["params"] / original_row["params"]
        print_row(f"k={k}", row["fine_tuned_test_accuracy"] or row["test_accuracy"],
                  row["params"], row["flops"], row["time_ratio"], row["flops_ratio"])
    results["sweep"] = [sweep[key] for key in sorted(sweep)]
    write_json(results_path, results)
    plot_figures(results, paths["figures"])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
