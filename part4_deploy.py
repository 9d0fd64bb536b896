"""Part 4: what do the compressed models gain in the runtime a device runs them in,
on this machine?

The study compresses "to deploy on mobile devices". This converts the ~90%
reference model and the fine-tuned compressed models of Parts 2, 3 and 5
(weights pruned, filters removed, Tucker-2, the latency-budget search) to
LiteRT flatbuffers with builtin ops only, in float32, dynamic-range int8 and
full int8 (calibrated on training images), the pruned ones also with their
sparse weights encoded, and measures them in the LiteRT interpreter (XNNPACK)
on the machine it runs on: test accuracy on every test image, latency per
image at batch 1 with 1 and 2 threads (every flatbuffer in every round,
interleaved), bytes on disk and gzipped. What int8 gains depends on the CPU:
the table is headed by this machine's name, and another machine's results
are stored beside, never mixed.

    python part4_deploy.py                 # every model present (~8 min on 2 cores)
    python part4_deploy.py --plot-only     # redraw the figure from the JSON

Models: models/reference.keras of --output-dir, else the repository's (or
--model), and each model file that a row of Parts 2, 3 and 5 made from it
(same model, data and validation split) names, its digest checked; for a
model that is missing it prints the command that makes it. Results go to
results/part4.json, keyed by the settings and the machine; on a machine other
than the committed run's, everything goes to runs/part4-<label>/ (see
common/runs.py), flatbuffers in its models/litert/. A flatbuffer measured with
the same settings is reused when its file checks out, unless --force; all of
them are timed again together whenever one changes.
"""

import os
import shlex

# TensorFlow is imported inside the functions that need it, so that --help and
# --plot-only answer at once.
from common import cli, runs
from common.data import VALIDATION_SIZE
from common.methods import METHODS
from common.results import NUMBER, Map, file_digest, runs_alike

# ---- configuration ---------------------------------------------------------
# Everything that changes this part's numbers, in the run's key
# (`run_settings`, this machine's identity added) but the precisions (each
# model in each precision is a row).
CONFIG = {
    "precisions": ["float32", "dynamic_int8", "int8"],
    # Pruned models also with sparse weights encoded: a smaller file; whether it
    # runs faster is the runtime's business (XNNPACK densifies it: docs/part4.md).
    "sparse_precisions": ["float32", "int8"],
    # int8's activation ranges come from this many training images, drawn at
    # random with the seed (never validation or test images).
    "calibration_images": 300,
    # Batch norms folded into the convs first (same outputs; common.inference):
    # what a deployed model runs, and int8 then quantizes one op, not three.
    "fold_batchnorm": True,
    "timing": {
        "threads": [1, 2],      # one core, as a phone app often gets, and two
        "batch_size": 1,
        "images": 300,          # validation images per flatbuffer per round (--timing-images)
        "repeats": 7,           # interleaved rounds: median, min-max as spread (--timing-repeats)
    },
}
RESULTS_FILE = "part4.json"
SUMMARY = {"median": NUMBER, "min": NUMBER, "max": NUMBER, "ratio": NUMBER}
SCHEMA = {
    "models": [{"name": str, "family": str, "precision": str, "sparse": bool,
                "source_sha256": str, "tflite": str, "tflite_sha256": str,
                "test_accuracy?": NUMBER, "bytes": int, "gzip_bytes": int,
                "latency?": Map(SUMMARY)}],
    "timing": {"params": dict, "digests": Map(str), "call_overhead": Map(SUMMARY)},
}
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--model", metavar="PATH", help=cli.MODEL_HELP.format("deploy"))
    parser.add_argument("--timing-images", type=cli.int_in_range(
        "--timing-images", 1, VALIDATION_SIZE), default=CONFIG["timing"]["images"], metavar="N",
        help=f"validation images per flatbuffer per timing round, 1..{VALIDATION_SIZE} "
             "(default: %(default)s)")
    parser.add_argument("--timing-repeats", type=cli.positive_int,
                        default=CONFIG["timing"]["repeats"],
                        metavar="N", help="interleaved timing rounds (default: %(default)s)")
    return parser.parse_args(argv)


def run_settings(args, model_sha256, data_id):
    """Everything that changes this part's numbers, this machine included."""
    from common import machine
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, "calibration_images": CONFIG["calibration_images"],
            "fold_batchnorm": CONFIG["fold_batchnorm"], "machine": machine.identity(),
            "timing": {**CONFIG["timing"],
                       "images": args.timing_images, "repeats": args.timing_repeats}}


def compressed_models(settings, results_dirs, options=""):
    """The compressed models made from the original, found in the results of
    Parts 2, 3 and 5 in `results_dirs`: rows of runs with the same original,
    data, validation split and train limit whose model file checks out.

    Returns
    -------
    found : dict name -> (path, info), info the fields its Part 4 rows carry
    missing : list of lines, one per wanted model that is not there
    """
    found, missing, seen = {}, [], {settings["model_sha256"]}
    for family, method in METHODS.items():   # where each method's models are
        if method.results is None:
            continue
        (part, section, wanted, command), key = method.results, method.key
        rows = [(row, folder) for folder in results_dirs
                for run in runs_alike(os.path.join(folder, part), settings)
                for row in run.get(section, [])]
        for row, folder in rows:
            name = method.file_name(row[key])
            problem = runs.model_problem(row)
            if row.get("model_sha256") in seen:
                continue  # the original itself (a budget int8 alone meets), or a model twice
            if problem is None and name not in found:
                seen.add(row["model_sha256"])
                found[name] = (runs.resolve(row["model"]), {
                    "family": family, key: row[key], "source": row["model"],
                    "source_sha256": row["model_sha256"],
                    "keras_test_accuracy": row.get("test_accuracy")})
        lacking = [v for v in wanted if method.file_name(v) not in found]
        if lacking:
            why = "; ".join(f"{method.file_name(row[key])}: {runs.model_problem(row)}"
                            for row, _ in rows if row[key] in lacking) or "no row made from it"
            missing.append(f"{family} {', '.join(f'{v:g}' for v in lacking)}: {why}; make "
                           f"with: {command.format(' '.join(f'{v:g}' for v in lacking))}"
                           f"{options}")
    return found, missing


def same_source_options(args, model_path, reference):
    """What follows a part's command in a "make with" line, so that the model
    it makes is one this run finds: the same model and training images (the
    rows' key), the same seed and output folder."""
    options = [] if reference else ["--model", model_path]
    if args.train_limit is not None:
        options += ["--train-limit", str(args.train_limit)]
    if args.seed:
        options += ["--seed", str(args.seed)]
    if args.output_dir:
        options += ["--output-dir", args.output_dir]
    return "".join(" " + shlex.quote(option) for option in options)


def variants(info):
    """(precision, sparse) pairs a model is converted in."""
    pairs = [(precision, False) for precision in CONFIG["precisions"]]
    if info["family"] == "pruned":
        pairs += [(precision, True) for precision in CONFIG["sparse_precisions"]]
    return pairs


def variant_name(model_name, precision, sparse):
    return f"{model_name} {precision}" + (" sparse" if sparse else "")


def deployable(keras_model, fold):
    """What is converted: the model, its batch norms folded if `fold`."""
    from common.inference import fold_batchnorm
    return fold_batchnorm(keras_model)[0] if fold else keras_model


def calibration_sample(images, count, seed):
    """`count` training images drawn at random (seeded)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return images[rng.choice(len(images), min(count, len(images)), replace=False)]


def stored_flatbuffer(row):
    """The bytes of a stored row's .tflite file if it is there as the row made
    it, else None (the row is made again)."""
    path = runs.resolve(row["tflite"])
    if os.path.isfile(path) and file_digest(path) == row["tflite_sha256"]:
        with open(path, "rb") as f:
            return f.read()
    return None


def convert(run, sources, splits):
    """Every (model, precision) flatbuffer: reused where a stored row of the
    same source model has its file as made, else converted, written, and its
    ops, delegate and size stored in its row. Returns name -> flatbuffer
    bytes, every variant of every source."""
    from common import deploy, measure, models
    stored = {row["name"]: row for row in run.find().get("models", [])}
    flatbuffers, todo = {}, []
    for model_name, (path, info) in sources.items():
        for precision, sparse in variants(info):
            name = variant_name(model_name, precision, sparse)
            row = stored.get(name)
            if row and row["source_sha256"] == info["source_sha256"] and not run.force:
                flatbuffers[name] = stored_flatbuffer(row)
                if flatbuffers[name] is None:
                    del flatbuffers[name]
                    print(f"{name}: {row['tflite']} is missing or has changed; converting again")
            if name not in flatbuffers:
                todo.append((model_name, precision, sparse))
    progress = cli.Sweep(len(todo), "flatbuffer", skipped=len(flatbuffers))
    calibration = calibration_sample(splits.train[0], run.settings["calibration_images"],
                                     run.settings["seed"])
    litert_dir = os.path.join(run.paths["models"], "litert")
    os.makedirs(litert_dir, exist_ok=True)
    for model_name in dict.fromkeys(m for m, _, _ in todo):   # a model's variants at a time
        path, info = sources[model_name]
        model = deployable(models.load_classifier(path), run.settings["fold_batchnorm"])
        pairs = [(p, sparse) for m, p, sparse in todo if m == model_name]
        try:
            made = deploy.to_flatbuffers([(model, p, calibration, sparse) for p, sparse in pairs])
        except ValueError as err:
            raise ValueError(f"{cli.shown_path(path)}: {err}") from None
        nonzero, flops = measure.count_nonzero_params(model), measure.count_flops(model)
        for (precision, sparse), flatbuffer in zip(pairs, made):
            name = variant_name(model_name, precision, sparse)
            target = os.path.join(litert_dir, name.replace(" ", "_") + ".tflite")
            with open(target, "wb") as f:
                f.write(flatbuffer)
            row = {"name": name, **info, "precision": precision, "sparse": sparse,
                   "tflite": cli.shown_path(target), "tflite_sha256": file_digest(target),
                   "ops": sorted(deploy.op_names(flatbuffer)),
                   "delegate": deploy.predictor(flatbuffer).delegate,
                   "nonzero_params": nonzero, "flops": flops, **deploy.sizes(flatbuffer)}
            old = stored.get(name)
            if old and old["tflite_sha256"] == row["tflite_sha256"]:
                row = {**old, **row}  # the same file made again: what was measured on it stands
            run.upsert("models", "name", row)
            flatbuffers[name] = flatbuffer
            progress.done(f"{name}: {row['bytes']:,} B, {row['gzip_bytes']:,} B gzipped")
    return flatbuffers


def report(run, flatbuffers, splits):
    """The report: each flatbuffer's accuracy on every test image, in LiteRT,
    read once per file (stored with its row)."""
    from common import deploy
    from common.evaluation import accuracy
    todo = [row for row in run.find()["models"]
            if row["name"] in flatbuffers and "test_accuracy" not in row]
    progress = cli.Sweep(len(todo), "test accuracy")
    for row in todo:
        test = splits.test()
        row = {**row, "test_accuracy": accuracy(deploy.predict(flatbuffers[row["name"]],
                                                               test[0]), test[1])}
        run.upsert("models", "name", row)
        progress.done(f"{row['name']}: test accuracy {row['test_accuracy']:.4f}")


def timing(run, flatbuffers, images):
    """Every flatbuffer timed together with the float32 original (the ratios'
    baseline) at each thread count, unless the stored timing holds every one
    of these files (the settings hold this machine, so every timing is of it;
    a run of fewer files keeps it whole). Rows not timed now lose their
    latency (the previous file is backed up): every latency stored is of one
    interleaved run."""
    from common import deploy, machine
    rows = [row for row in run.find()["models"] if row["name"] in flatbuffers]
    digests = {row["name"]: row["tflite_sha256"] for row in rows}
    stored = run.find().get("timing", {})
    timed = stored.get("digests", {})
    if all(timed.get(name) == digest for name, digest in digests.items()) \
            and all("latency" in r for r in rows) and not run.force:
        print(f"timing: these {len(digests)} flatbuffers were timed together already"
              + (f" (with {len(timed) - len(digests)} more)" if len(timed) > len(digests) else "")
              + ", reused")
        return
    params = run.settings["timing"]
    print(f"timing {len(flatbuffers)} flatbuffers x threads {params['threads']} at batch 1 on "
          f"{machine.label(run.settings['machine'])}, interleaved: a warm-up, "
          f"{params['repeats']} rounds of {params['images']} validation images ...")
    latency = deploy.latency(flatbuffers, images[:params["images"]],
                             variant_name("original", "float32", False),
                             tuple(params["threads"]),
                             params["repeats"], run.settings["seed"])

    def record(stored_run):  # the timing block describes exactly the rows with a latency
        for row in stored_run["models"]:
            if row["name"] in flatbuffers:
                row["latency"] = {t: latency[t][row["name"]] for t in latency}
            else:
                row.pop("latency", None)  # timed in another run: not beside these
        stored_run["timing"] = {"params": params, "digests": digests, "call_overhead": {
            t: latency[t][deploy.CALL_OVERHEAD] for t in latency}}
    if stored:
        run.back_up()
    run.update(record)


def plot_figures(run, figures_dir):
    from common import plots_deployment as plots
    if run.get("models"):
        print("wrote", plots.plot_deployment(run, os.path.join(figures_dir, "part4_deploy.png")))


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only:
        return runs.plot_only(RESULTS_FILE, args, plot_figures, SCHEMA)
    run, splits, model_path = runs.start(
        RESULTS_FILE, args, lambda digest, data_id: run_settings(args, digest, data_id), SCHEMA)
    from common import machine, report as tables
    import glob
    reference = cli.is_reference(model_path)
    results_dirs = sorted({os.path.join(cli.REPO_ROOT, "results"), run.paths["results"],
                           *glob.glob(os.path.join(cli.REPO_ROOT, runs.RUNS_FOLDER, "*",
                                                   "results"))})
    found, missing = compressed_models(run.settings, results_dirs,
                                       same_source_options(args, model_path, reference))
    for line in missing:
        print(f"not deployed: {line}")
    sources = {"original": (model_path, {
        "family": "original", "source": cli.shown_path(model_path),
        "source_sha256": run.settings["model_sha256"],
        "keras_bytes": os.path.getsize(model_path)}), **found}
    flatbuffers = convert(run, sources, splits)
    report(run, flatbuffers, splits)
    timing(run, flatbuffers, splits.validation[0])
    current = {**run.find(), "models": [row for row in run.find()["models"]   # one timing
                                        if row["name"] in flatbuffers or "latency" in row]}
    print(f"\nLiteRT on {machine.label(run.settings['machine'])}:\n")
    print(tables.part4_table(current))
    if reference:   # the targets are the reference's
        print(tables.part4_targets(current))
    plot_figures(current, run.paths["figures"])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
