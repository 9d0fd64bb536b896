"""Part 4: what do the compressed models gain in the runtime a device runs them in?

The study compresses "to deploy on mobile devices". This converts the ~90%
reference model and the fine-tuned compressed models of Parts 2 and 3 (weights
pruned, filters removed, Tucker-2) to LiteRT flatbuffers with builtin ops only, in float32, dynamic-range int8 and full int8
(calibrated on training images), the pruned ones also with their sparse
weights encoded, and measures them in the LiteRT interpreter (XNNPACK): test
accuracy on every test image, latency per image at batch 1 with 1 and 2
threads (every model in every round, interleaved), bytes on disk and gzipped.

    python part4_deploy.py                 # every model present (~4 min for 7 models)
    python part4_deploy.py --plot-only     # redraw the figure from the JSON

Models: models/reference.keras of --output-dir, else the repository's (or
--model); models/tucker_k<k>.keras (`part3_tucker.py --fine-tune 3`),
models/pruned_<percent>.keras (`part2_prune.py`) and
models/structured_<percent>.keras (`part2_structured.py`), each used when a
results row of Part 3 or 2 made from the same original names its exact file.
For a model that is missing it prints the command that makes it. Flatbuffers are written
to models/litert/ (made again in seconds from the Keras models; not
committed); results go to results/part4.json, keyed by the settings, a row at
a time; a model measured with the same settings is skipped unless --force.
"""

import os

from common import cli
from common.data import load_for_run
from common.results import ResultsStore, file_digest, run_metadata, runs_of_other_part, upsert

# ---- configuration ---------------------------------------------------------
PRECISIONS = ("float32", "dynamic_int8", "int8")
# Pruned models also with sparse weights encoded: a smaller file; whether it
# runs faster is the runtime's business (XNNPACK densifies it: docs/part4.md).
SPARSE_PRECISIONS = ("float32", "int8")
TUCKER_K = range(1, 9)
PRUNED_SPARSITIES = (0.5, 0.8, 0.85, 0.9, 0.95)   # Part 2's fine-tuned models
STRUCTURED_REDUCTIONS = (0.5, 0.65, 0.75)    # part2_structured.py's, of the FLOPs
# int8's activation ranges come from this many training images, drawn at
# random with the seed (never test images: ranges fitted to them flatter).
CALIBRATION_IMAGES = 300
# Batch norms folded into the convs first (same outputs; common.inference):
# what a deployed model runs, and int8 then quantizes one op, not three.
FOLD_BATCHNORM = True
THREADS = (1, 2)                 # one core, as a phone app often gets, and two
TIMING_IMAGES = 300              # per model per round, at batch 1
TIMING_REPEATS = 5               # interleaved rounds: median, min-max as spread
RESULTS_FILE = "part4.json"
# -----------------------------------------------------------------------------

# The commands that make the compressed models, and their time on 2 CPU cores.
MAKE = {"tucker": "python part3_tucker.py --fine-tune 3 --k {}   (3-10 min per k)",
        "pruned": "python part2_prune.py --fine-tune-sparsities {}   (7-15 min each)",
        "structured": "python part2_structured.py --flops-reductions {}   (~50 min for all three)"}


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--model", metavar="PATH", help=cli.MODEL_HELP.format("deploy"))
    parser.add_argument("--timing-images", type=cli.positive_int, default=TIMING_IMAGES,
                        metavar="N", help="images per model per timing round "
                                          "(default: %(default)s)")
    parser.add_argument("--timing-repeats", type=cli.positive_int, default=TIMING_REPEATS,
                        metavar="N", help="interleaved timing rounds (default: %(default)s)")
    return parser.parse_args(argv)


def compressed_models(original_sha256, results_dir, models_dir):
    """The fine-tuned Tucker-2, pruned and filter-removed models made from the original.

    A model file counts when a row of Part 3's (Tucker) or Part 2's (pruned,
    structured) results, in a fine-tuned run of the same original, names its
    digest: its accuracy and forward-time ratio in Keras then come with it.

    Returns
    -------
    found : dict name -> (path, info)
    missing : dict family -> [k, sparsity or FLOPs reduction] of those not there
    """
    def rows(part, section):
        runs = runs_of_other_part(os.path.join(results_dir, part)) or []
        return [row for run in runs if run["settings"]["model_sha256"] == original_sha256
                and run["settings"].get("fine_tune") for row in run.get(section, [])]

    def find(name, candidates):
        path = os.path.join(models_dir, f"{name}.keras")
        digest = file_digest(path) if os.path.isfile(path) else None
        return path, next((row for row in candidates
                           if digest and row.get("model_sha256") == digest), None)

    # family, results file and section, the row's key, its values, the
    # row's fields for accuracy and Keras time ratio (a weight-pruned model
    # runs at dense speed in Keras: not timed there)
    families = (("tucker", "part3.json", "sweep", "k", TUCKER_K,
                 "fine_tuned_test_accuracy", "time_ratio"),
                ("pruned", "part2.json", "finetune", "sparsity", PRUNED_SPARSITIES,
                 "test_accuracy_after", None),
                ("structured", "part2_structured.json", "finetuned", "flops_reduction",
                 STRUCTURED_REDUCTIONS, "test_accuracy_after", "keras_time_ratio"))
    found, missing = {}, {}
    for family, part, section, key, values, accuracy, time_ratio in families:
        candidates = rows(part, section)
        for value in values:
            name = f"tucker_k{value}" if family == "tucker" else f"{family}_{round(100 * value)}"
            path, row = find(name, [row for row in candidates if row[key] == value])
            if row is None:
                missing.setdefault(family, []).append(value)
                continue
            found[name] = (path, {"family": family, key: value,
                                  "source_sha256": row["model_sha256"],
                                  "keras_test_accuracy": row[accuracy],
                                  "keras_time_ratio": row.get(time_ratio)})
    return found, missing


def original_info(model, test, model_path):
    """The original's accuracy in Keras and its .keras file's bytes."""
    from common.training import test_accuracy
    return {"family": "original", "keras_test_accuracy": test_accuracy(model, test),
            "keras_time_ratio": 1.0, "keras_bytes": os.path.getsize(model_path)}


def variants(info):
    """(precision, sparse) pairs a model is converted in."""
    pairs = [(precision, False) for precision in PRECISIONS]
    if info["family"] == "pruned":
        pairs += [(precision, True) for precision in SPARSE_PRECISIONS]
    return pairs


def variant_name(model_name, precision, sparse):
    return f"{model_name} {precision}" + (" sparse" if sparse else "")


def litert_path(litert_dir, name):
    return os.path.join(litert_dir, name.replace(" ", "_") + ".tflite")


def convert_and_measure(keras_model, name, info, precision, sparse, calibration, test,
                        litert_dir):
    """One flatbuffer: converted, saved, its accuracy and size measured.
    Returns its row and the flatbuffer."""
    from common import deploy, measure
    from common.training import accuracy
    flatbuffer = deploy.to_flatbuffer(keras_model, precision, calibration, sparse=sparse)
    path = litert_path(litert_dir, name)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    row = {"name": name, **info, "precision": precision, "sparse": sparse,
           "tflite": cli.shown_path(path), "tflite_sha256": file_digest(path),
           "ops": sorted(deploy.op_names(flatbuffer)),
           "delegate": deploy.predictor(flatbuffer).delegate,
           "test_accuracy": accuracy(deploy.predict(flatbuffer, test[0]), test[1]),
           "nonzero_params": measure.count_nonzero_params(keras_model),
           "flops": measure.count_flops(keras_model), **deploy.sizes(flatbuffer)}
    return row, flatbuffer


def time_side_by_side(flatbuffers, baseline, images, repeats, seed):
    """Latency per image of each flatbuffer at each thread count, interleaved
    in every round with the `baseline` one (the float32 original), and the
    ratio to the baseline's median at the same thread count.

    Returns dict name -> {"latency": {threads: summary}, "time_ratio": {threads: r}}
    """
    from common import deploy, measure
    print(f"timing {len(flatbuffers)} flatbuffers x threads {THREADS} at batch 1, "
          f"interleaved: a warm-up, {repeats} rounds of {len(images)} images ...")
    seconds = deploy.time_per_image(flatbuffers, images, THREADS, repeats, seed, progress=True)
    latency = {name: {str(t): measure.summarize_seconds(seconds[name, t]) for t in THREADS}
               for name in flatbuffers}
    return {name: {"latency": latency[name],
                   "time_ratio": {t: latency[name][t]["median"] / latency[baseline][t]["median"]
                                  for t in latency[name]}}
            for name in flatbuffers}


def run_settings(args, model_sha256, data_id):
    """Everything that changes this part's numbers: results are keyed by it."""
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, "calibration_images": CALIBRATION_IMAGES,
            "fold_batchnorm": FOLD_BATCHNORM}


def plot_figures(run, figures_dir):
    from common import plots
    if run.get("models"):
        print("wrote", plots.plot_deployment(run, os.path.join(figures_dir, "part4_deploy.png")))


def deployable(keras_model):
    """What is converted: the model with its batch norms folded (FOLD_BATCHNORM)."""
    from common.inference import fold_batchnorm
    return fold_batchnorm(keras_model)[0] if FOLD_BATCHNORM else keras_model


def calibration_sample(images, seed):
    """CALIBRATION_IMAGES training images drawn at random (seeded)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return images[rng.choice(len(images), min(CALIBRATION_IMAGES, len(images)), replace=False)]


def main(argv=None):
    args = parse_args(argv)
    paths = cli.output_paths(args.output_dir)
    store = ResultsStore(os.path.join(paths["results"], RESULTS_FILE))
    if args.plot_only:
        return cli.plot_every_run(store, paths["figures"], plot_figures)
    model_path = cli.model_path(args.model, args.output_dir)
    train, test, source, data_id = load_for_run(args.data_dir, args.train_limit)
    cli.load_backend()
    from common import deploy, models, report
    original = models.load_classifier(model_path)
    settings = run_settings(args, file_digest(model_path), data_id)
    found, missing = compressed_models(settings["model_sha256"], paths["results"],
                                       paths["models"])
    for family, values in missing.items():
        print(f"not there, or not made from {cli.shown_path(model_path)}: {family} "
              f"{', '.join(f'{v:g}' for v in values)}; make them with:\n    "
              + MAKE[family].format(" ".join(f"{v:g}" for v in values)))
    sources = {"original": (model_path, {**original_info(original, test, model_path),
                                         "source_sha256": settings["model_sha256"]}), **found}
    cli.back_up_if_forced(store, settings, args.force)
    stored = {} if args.force else {row["name"]: row for row in
                                    (store.find(settings) or {}).get("models", [])}
    store.update(settings, lambda run: None,
                 meta={**run_metadata(source), "model": cli.shown_path(model_path),
                       "ai_edge_litert": _litert_version()})
    litert_dir = os.path.join(paths["models"], "litert")
    os.makedirs(litert_dir, exist_ok=True)
    calibration = calibration_sample(train[0], args.seed)

    # Every (model, precision) not measured yet from the same model file.
    todo = []
    for model_name, (path, info) in sources.items():
        for precision, sparse in variants(info):
            row = stored.get(variant_name(model_name, precision, sparse))
            if (row is None or "latency" not in row
                    or row["source_sha256"] != info["source_sha256"]):
                todo.append((model_name, precision, sparse))
    progress = cli.Sweep(len(todo), "flatbuffer", skipped=sum(
        len(variants(info)) for _, info in sources.values()) - len(todo))
    flatbuffers, ready = {}, {}  # name -> bytes of what is converted now; model -> Keras model
    for model_name, precision, sparse in todo:
        path, info = sources[model_name]
        if model_name not in ready:
            ready = {model_name: deployable(
                original if model_name == "original" else models.load_classifier(path))}
        name = variant_name(model_name, precision, sparse)
        try:
            row, flatbuffers[name] = convert_and_measure(
                ready[model_name], name, info, precision, sparse, calibration, test, litert_dir)
        except ValueError as err:
            raise ValueError(f"{cli.shown_path(path)}: {err}") from None
        store.update(settings, lambda run, row=row: run.update(
            models=upsert(run.get("models", []), "name", row)))
        progress.done(f"{name}: test accuracy {row['test_accuracy']:.4f}, "
                      f"{row['bytes']:,} B, {row['gzip_bytes']:,} B gzipped")

    if flatbuffers:  # timed together with the float32 original, the ratios' baseline
        baseline = variant_name("original", "float32", False)
        timed = {baseline: flatbuffers.get(baseline) or stored_flatbuffer(
            stored[baseline], litert_dir, lambda: deploy.to_flatbuffer(deployable(original))),
            **flatbuffers}
        timing = time_side_by_side(timed, baseline, test[0][:args.timing_images],
                                   args.timing_repeats, args.seed)

        def record_timing(run):
            for row in run["models"]:
                if row["name"] in flatbuffers:
                    row.update(timing[row["name"]])
            run["timing"] = {"threads": list(THREADS), "batch_size": 1,
                             "images": args.timing_images, "repeats": args.timing_repeats,
                             "delegate": "XNNPACK (LiteRT's default CPU delegate)"}
        store.update(settings, record_timing)
    run = store.find(settings)
    print(report.part4_table(run))
    print(report.part4_targets(run))
    plot_figures(run, store.figures_dir(paths["figures"], settings))
    return 0


def stored_flatbuffer(row, litert_dir, remake):
    """The flatbuffer file of a stored row if it is there as made, else `remake()`."""
    path = litert_path(litert_dir, row["name"])
    if os.path.isfile(path) and file_digest(path) == row.get("tflite_sha256"):
        with open(path, "rb") as f:
            return f.read()
    return remake()


def _litert_version():
    from importlib.metadata import version
    return version("ai-edge-litert")


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
