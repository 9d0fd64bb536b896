"""Part 2, structured: does removing whole filters make the network really faster,
and what does it cost in accuracy?

The study's second drawback of pruning: a sparse network "will not have the
efficiency gains over a fully dense network" (measured: 90% of the weights
pruned runs at dense speed in Keras and in LiteRT). Removing whole conv
filters instead leaves a smaller dense network (common.structured). For each
FLOPs reduction, filters are ranked by their L1 norm or by how much the next
layer reads them (mean activation x weights), and allocated the same share in
every layer, by one ranking across layers, or from a per-layer sensitivity
sweep weighed by each layer's FLOPs; each pair is measured as pruned and with
batch norm re-estimated (no training, seconds each). The pair that does best
on held-out training images (never the test images) is fine-tuned with
Part 2's recipe (the dense model as teacher) and
timed side by side with the original in Keras (batch 256) and in LiteRT
(batch 1, 1 and 2 threads).

    python part2_structured.py                     # everything (~50 min on 2 CPU cores)
    python part2_prune.py --structured             # the same
    python part2_structured.py --flops-reductions 0.5 --fine-tune-epochs 0   # quick (~5 min)
    python part2_structured.py --plot-only         # redraw the figure from the JSON

The model is models/reference.keras of --output-dir, else the repository's;
--model takes any .keras CIFAR-10 classifier whose convs can be followed (a
residual Add cannot). Results go to results/part2_structured.json piece by
piece, keyed by the settings; a rerun skips finished pieces unless --force.
Fine-tuned models are saved as models/structured_<percent>.keras.
"""

import os

import part2_prune
from common import cli
from common.data import load_for_run
from common.results import ResultsStore, file_digest, run_metadata, runs_of_other_part, upsert

# ---- configuration ---------------------------------------------------------
# Shares of the FLOPs removed. The speed target, >= 2x in LiteRT, needs about
# 60% or more: half the filters of every conv (0.29 of the MACs) ran in 0.31
# of the time in a probe; 50% shows the way there.
FLOPS_REDUCTIONS = (0.5, 0.65, 0.75)
CRITERIA = ("l1", "activation")
ALLOCATIONS = ("uniform", "global", "sensitivity")
# The per-layer sweep: that layer alone keeps these shares of its filters
# (batch norm re-estimated); shares in between are interpolated.
SENSITIVITY_SHARES = (0.75, 0.5, 0.25)
# Training images for the activation criterion (the first 2,000: every
# channel is seen at >= 9 positions per image in the last block's 3x3 maps)
# and for batch-norm re-estimation of each pruned candidate (~2 s each).
IMPORTANCE_IMAGES = 2_000
# The choice between candidates (sensitivity curves, best pair per reduction)
# is made on the last 2,000 training images, never on the test images.
SELECTION_IMAGES = 2_000
TIMING_BATCH_SIZE = 256          # Keras, as Part 3 times
TIMING_REPEATS = 5
LITERT_THREADS = (1, 2)          # LiteRT at batch 1, as Part 4 times
LITERT_TIMING_IMAGES = 300
RESULTS_FILE = "part2_structured.json"
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--model", metavar="PATH", help=cli.MODEL_HELP.format("prune"))
    parser.add_argument("--flops-reductions", type=cli.unit_fraction("FLOPs reduction"),
                        nargs="+", metavar="R", default=list(FLOPS_REDUCTIONS),
                        help="shares of the FLOPs to remove (default: 0.5 0.65 0.75)")
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="the convs whose filters may go (default: every trainable "
                             "Conv2D; the reference's frozen whitening conv is never one)")
    parser.add_argument("--fine-tune-epochs", type=cli.non_negative_int,
                        default=part2_prune.FINE_TUNE_EPOCHS, metavar="N",
                        help="epochs of fine-tuning the best pruned model per reduction; "
                             "0 skips fine-tuning and timing (default: %(default)s)")
    parser.add_argument("--timing-repeats", type=cli.positive_int, default=TIMING_REPEATS,
                        metavar="N", help="interleaved timing rounds (default: %(default)s)")
    return parser.parse_args(argv)


def run_settings(args, model_sha256, data_id):
    """Everything that changes this section's numbers: results are keyed by it."""
    from common import precision
    fine_tune = {"epochs": args.fine_tune_epochs, "precision": precision.resolve(args.precision),
                 "batch_size": args.batch_size or part2_prune.FINE_TUNE_BATCH_SIZE,
                 "peak_learning_rate": part2_prune.FINE_TUNE_LEARNING_RATE,
                 "distillation_weight": part2_prune.FINE_TUNE_DISTILLATION_WEIGHT}
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, "flops_reductions": sorted(args.flops_reductions),
            "layers": args.layers,
            "sensitivity_shares": list(SENSITIVITY_SHARES),
            "importance_images": IMPORTANCE_IMAGES, "selection_images": SELECTION_IMAGES,
            "fine_tune": fine_tune if args.fine_tune_epochs else None}


def importance(model, names, images):
    """Each criterion's score of every filter: dict criterion -> conv -> (f,)."""
    from common import structured
    return {"l1": structured.l1_norms(model, names),
            "activation": structured.activation_importance(model, names, images)}


def selection_accuracy(model, train):
    """Accuracy on the last SELECTION_IMAGES training images (the held-out choice)."""
    from common.training import accuracy
    images, labels = train[0][-SELECTION_IMAGES:], train[1][-SELECTION_IMAGES:]
    return accuracy(model.predict(images, batch_size=1000, verbose=0), labels)


def measure_pruned(model, keep, train, test=None):
    """The model without the filters `keep` leaves out, batch norm re-estimated:
    its accuracy on the selection images, and with `test` its test accuracy
    as pruned and re-estimated, parameters and FLOPs. Returns model, row."""
    from common import measure, structured
    from common.training import recalibrate_batchnorm, test_accuracy
    smaller = structured.remove_filters(model, keep)
    row = {} if test is None else {"test_accuracy": test_accuracy(smaller, test)}
    recalibrate_batchnorm(smaller, train[0][:IMPORTANCE_IMAGES])
    row["selection_accuracy"] = selection_accuracy(smaller, train)
    if test is not None:
        row.update(test_accuracy_recalibrated=test_accuracy(smaller, test),
                   params=measure.count_params(smaller), flops=measure.count_flops(smaller),
                   filters={name: len(indices) for name, indices in keep.items()})
    return smaller, row


def sensitivity_sweep(model, scores, train, done, save):
    """Per criterion and layer: accuracy on the selection images (batch norm
    re-estimated) with only that layer keeping each of SENSITIVITY_SHARES of
    its filters (its best ones), and all of them (share 1)."""
    from common import structured
    dense = selection_accuracy(model, train)
    todo = [(c, n) for c in scores for n in scores[c] if n not in done.get(c, {})]
    sweep = cli.Sweep(len(todo), "sensitivity", skipped=sum(map(len, scores.values())) - len(todo))
    for criterion, name in todo:
        filters = model.get_layer(name).filters
        accuracies = [dense]
        for share in SENSITIVITY_SHARES:
            keep = structured.keep_indices(scores[criterion],
                                           {name: max(1, round(share * filters))})
            accuracies.append(measure_pruned(model, keep, train)[1]["selection_accuracy"])
        curve = {"share": [1.0, *SENSITIVITY_SHARES], "accuracy": accuracies}
        save(criterion, name, curve)
        sweep.done(f"{criterion} {name}: " + " ".join(
            f"{s:g}:{a:.3f}" for s, a in zip(curve["share"], accuracies)))


def allocate(model, allocation, scores, curves, flops_fraction):
    """Filters kept per conv under one allocation rule."""
    from common import structured
    if allocation == "uniform":
        return structured.uniform_counts(model, list(scores), flops_fraction)
    if allocation == "global":
        return structured.global_counts(model, scores, flops_fraction)
    return structured.sensitivity_counts(model, curves, flops_fraction)


def screen(model, names, scores, curves, reductions, train, test, done, save):
    """Every criterion x allocation at each FLOPs reduction, measured without
    training (see `measure_pruned`); `save(row)` after each, rows in `done`
    skipped."""
    from common import structured
    done = {(r["flops_reduction"], r["criterion"], r["allocation"]) for r in done}
    todo = [(r, c, a) for r in reductions for c in CRITERIA for a in ALLOCATIONS
            if (r, c, a) not in done]
    full_flops = structured.flops_after(model, {n: model.get_layer(n).filters for n in names})
    sweep = cli.Sweep(len(todo), "pruned candidate", skipped=len(done))
    for reduction, criterion, allocation in todo:
        counts = allocate(model, allocation, scores[criterion], curves[criterion],
                          1 - reduction)
        _, row = measure_pruned(model, structured.keep_indices(scores[criterion], counts),
                                train, test)
        row.update(key=f"{reduction} {criterion} {allocation}", flops_reduction=reduction,
                   criterion=criterion, allocation=allocation,
                   flops_ratio=row["flops"] / full_flops)
        save(row)
        sweep.done(f"-{reduction:.0%} FLOPs, {criterion}, {allocation}: "
                   f"{row['test_accuracy']:.4f}, {row['test_accuracy_recalibrated']:.4f} "
                   "batch norm re-estimated")


def fine_tune_best(model_path, model, scores, candidates, train, test, settings, seed, path):
    """The candidate that does best on the held-out training images, its
    filters removed, batch norm re-estimated, fine-tuned with the dense model
    as teacher (Part 2's recipe) and saved to `path`. Returns model, row."""
    from common import models, structured, training
    best = max(candidates, key=lambda r: r["selection_accuracy"])
    print(f"-{best['flops_reduction']:.0%} FLOPs: fine-tuning {best['criterion']}, "
          f"{best['allocation']} ({best['selection_accuracy']:.4f} on held-out training images)")
    keep = structured.keep_indices(scores[best["criterion"]], best["filters"])
    smaller = structured.remove_filters(model, keep)
    training.recalibrate_batchnorm(smaller, train[0][:IMPORTANCE_IMAGES])
    recipe = {k: v for k, v in settings.items() if k != "distillation_weight"}
    records = training.fine_tune(smaller, train, test, seed=seed,
                                 teacher=models.load_classifier(model_path),
                                 distillation_weight=settings["distillation_weight"], **recipe)
    smaller.save(path)
    row = {k: v for k, v in best.items() if k != "key"}
    row.update(records=records, test_accuracy_after=training.test_accuracy(smaller, test),
               model_sha256=file_digest(path))
    return smaller, row


def time_side_by_side(models_by_name, images, repeats, seed):
    """Keras time (batch 256, batch norms folded) and LiteRT latency (batch 1,
    float32) of each model, all timed together with the "original"; ratios to it."""
    from common import deploy, measure
    from common.inference import fold_batchnorm
    folded = {name: fold_batchnorm(model)[0] for name, model in models_by_name.items()}
    print(f"timing {len(folded)} models side by side in Keras (batch {TIMING_BATCH_SIZE}) ...")
    keras_seconds = measure.time_forward(folded, images, batch_size=TIMING_BATCH_SIZE,
                                         repeats=repeats, seed=seed, progress=True)
    print(f"... and in LiteRT (batch 1, threads {LITERT_THREADS}) ...")
    flatbuffers = {name: deploy.to_flatbuffer(model) for name, model in folded.items()}
    litert_seconds = deploy.time_per_image(flatbuffers, images[:LITERT_TIMING_IMAGES],
                                           LITERT_THREADS, repeats, seed, progress=True)
    timing = {}
    for name in folded:
        keras_time = measure.summarize_seconds(keras_seconds[name])
        litert = {str(t): measure.summarize_seconds(litert_seconds[name, t])
                  for t in LITERT_THREADS}
        timing[name] = {"keras_seconds": keras_time, "litert_seconds_per_image": litert}
    for name, row in timing.items():
        row["keras_time_ratio"] = (row["keras_seconds"]["median"]
                                   / timing["original"]["keras_seconds"]["median"])
        row["litert_time_ratio"] = {t: s["median"] / timing["original"]
                                    ["litert_seconds_per_image"][t]["median"]
                                    for t, s in row["litert_seconds_per_image"].items()}
    return timing


def plot_figures(run, results_dir, figures_dir):
    from common import plots
    if not run.get("finetuned"):
        print("part2_structured.png not drawn: no fine-tuned, timed models in this run")
        return
    part3 = [r for r in runs_of_other_part(os.path.join(results_dir, "part3.json")) or []
             if r["settings"]["model_sha256"] == run["settings"]["model_sha256"]
             and r.get("sweep")]
    part4 = [r for r in runs_of_other_part(os.path.join(results_dir, "part4.json")) or []
             if r["settings"]["model_sha256"] == run["settings"]["model_sha256"]]
    print("wrote", plots.plot_structured(run, part3, part4,
                                         os.path.join(figures_dir, "part2_structured.png")))


def main(argv=None):
    args = parse_args(argv)
    paths = cli.output_paths(args.output_dir)
    store = ResultsStore(os.path.join(paths["results"], RESULTS_FILE))
    if args.plot_only:
        return cli.plot_every_run(store, paths["figures"], lambda run, folder: plot_figures(
            run, paths["results"], folder))
    model_path = cli.model_path(args.model, args.output_dir)
    train, test, source, data_id = load_for_run(args.data_dir, args.train_limit)
    cli.load_backend()
    from common import models, structured
    from common.training import test_accuracy
    model = models.load_classifier(model_path)
    names = structured.prunable_convs(model)
    wrong = [name for name in args.layers or [] if name not in names]
    if wrong:
        raise ValueError(f"--layers: {', '.join(wrong)}: not a prunable conv of "
                         f"{cli.shown_path(model_path)}; choose from {', '.join(names)}")
    names = args.layers or names
    structured.channel_sources(model, names)  # a model it cannot follow fails here
    settings = run_settings(args, file_digest(model_path), data_id)
    cli.back_up_if_forced(store, settings, args.force)
    run = {} if args.force else store.find(settings) or {}
    dense = run.get("dense_test_accuracy") or test_accuracy(model, test)
    store.update(settings, lambda run: run.update(dense_test_accuracy=dense),
                 meta={**run_metadata(source), "model": cli.shown_path(model_path)})
    scores = importance(model, names, train[0][:IMPORTANCE_IMAGES])

    def save_curve(criterion, name, curve):
        store.update(settings, lambda run: run.setdefault("sensitivity", {}).setdefault(
            criterion, {}).update({name: curve}))
    sensitivity_sweep(model, scores, train, run.get("sensitivity", {}), save_curve)
    curves = store.find(settings)["sensitivity"]

    screen(model, names, scores, curves, args.flops_reductions, train, test,
           run.get("candidates", []), lambda row: store.update(settings, lambda run: run.update(
               candidates=upsert(run.get("candidates", []), "key", row))))
    if not settings["fine_tune"]:
        plot_figures(store.find(settings), paths["results"],
                     store.figures_dir(paths["figures"], settings))
        return 0
    chosen = {}  # FLOPs reduction -> the fine-tuned model
    for reduction in sorted(args.flops_reductions, reverse=True):  # the smallest model first
        candidates = [r for r in store.find(settings)["candidates"]
                      if r["flops_reduction"] == reduction]
        path = os.path.join(paths["models"], f"structured_{round(reduction * 100)}.keras")
        row = next((r for r in run.get("finetuned", []) if r["flops_reduction"] == reduction), {})
        if os.path.exists(path) and file_digest(path) == row.get("model_sha256"):
            chosen[reduction] = models.load_classifier(path)
            print(f"-{reduction:.0%} FLOPs: fine-tuned already, reusing {path}")
            continue
        chosen[reduction], row = fine_tune_best(model_path, model, scores, candidates, train,
                                                test, settings["fine_tune"], args.seed, path)
        store.update(settings, lambda run, row=row: run.update(finetuned=upsert(
            run.get("finetuned", []), "flops_reduction", row)))
        print(f"-{reduction:.0%} FLOPs: {row['test_accuracy_after']:.4f} after "
              f"{settings['fine_tune']['epochs']} epochs (dense: {dense:.4f})")

    timing = time_side_by_side({"original": model, **{f"-{r:.0%}": m for r, m in chosen.items()}},
                               test[0], args.timing_repeats, args.seed)

    def record_timing(run):
        run["original_timing"] = timing["original"]
        for row in run["finetuned"]:
            if f"-{row['flops_reduction']:.0%}" in timing:
                row.update(timing[f"-{row['flops_reduction']:.0%}"])
        run["timing"] = {"keras_batch_size": TIMING_BATCH_SIZE, "repeats": args.timing_repeats,
                         "images": len(test[0]), "litert_threads": list(LITERT_THREADS),
                         "litert_images": LITERT_TIMING_IMAGES, "batch_norm_folded": True}
    run = store.update(settings, record_timing)
    for row in run["finetuned"]:
        print(f"-{row['flops_reduction']:.0%} FLOPs ({row['criterion']}, {row['allocation']}): "
              f"{row['test_accuracy_after']:.4f}; time x{row['keras_time_ratio']:.3f} Keras, "
              f"x{row['litert_time_ratio']['1']:.3f} LiteRT (1 thread)")
    plot_figures(run, paths["results"], store.figures_dir(paths["figures"], settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
