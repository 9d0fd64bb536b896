"""Part 5: what is the most accurate model that runs within a latency budget on
this machine?

Composes the suite's methods per conv layer: a share of its group's channels
removed (Part 2's structured surgery, through residual adds and
concatenations), Tucker-2 on what remains (Part 3), and the whole model in
int8 where int8 is faster here (Part 4), else float32. As NetAdapt does,
latency is measured, not modelled: every conv's block is timed alone in
LiteRT (batch 1, 1 thread, XNNPACK) at every width it can have, and a
configuration's latency is predicted as the sum of its blocks', corrected by
a line fitted to whole models timed end to end. Each choice's accuracy loss
is measured alone on the validation split (batch norm re-estimated); a
dynamic programme over the convs (common/search.py: exact for these sums, on
any graph whose groups stay open a few convs at a time) finds the
configurations that lose least within each budget; the best few are built, briefly fine-tuned and
measured for real (validation accuracy in the deployed precision, end-to-end
latency); the best that meets the budget is fine-tuned with the shared recipe,
the reference as teacher. The test set is read once per final model, in the
report.

    python part5_budget.py --latency-budget 0.1      # 10x faster than float32 (~30 min)
    python part5_budget.py                           # the front, budgets 0.5 ... 0.05 (~1.5 h)
    python part5_budget.py --latency-budget-ms 0.2   # a budget in ms per image
    python part5_budget.py --quick                   # a newcomer's try: budget 0.2 (~28 min AVX2 EPYC)
    python part5_budget.py --model M --keeps 1 0.75 0.5 --ranks none 0.5   # a smaller grid
    python part5_budget.py --plot-only               # redraw the figures

A budget is a share of the reference's float32 LiteRT latency on this machine
(or ms per image). Results go to results/part5_budget.json, keyed by the
settings and this machine; on another machine everything goes to
runs/part5_budget-<label>/ (see common/runs.py). Each final model is saved as
models/budget_<budget>.keras and .tflite in the run's folder. Every step is
stored as it ends: a killed run resumes where it was.
"""

import functools
import os

# TensorFlow is imported inside the functions that need it, so that --help and
# --plot-only answer at once.
from common import cli, runs
from common.results import NUMBER, Map, Nullable

# ---- configuration ---------------------------------------------------------
# Everything that changes this part's numbers, in the run's key
# (`run_settings`, this machine's identity added) but the budgets (each is a
# row of the front: more of them extend the same run).
CONFIG = {
    # The front, as shares of the reference's float32 time. Where int8 pays (on
    # int8 dot-product CPUs int8 alone takes ~0.12), the budgets above cost nothing.
    "budgets": [0.5, 0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05],
    # Per group: shares of its channels kept (--keeps); per conv: Tucker-2
    # ranks as shares of its remaining channels (--ranks; None: not
    # decomposed). A conv's blocks to time grow with keeps^2 x ranks where a
    # group is read and made by others (ResNets).
    "keeps": [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25],
    "ranks": [None, 0.75, 0.5, 0.25],
    # The search's latency step: a budget's 1/400 (finer costs time, not
    # accuracy: the best few are built and measured).
    "resolution_steps": 400,
    # Training images for the activation criterion (which filters go: Part
    # 2's structured run found it best at large reductions) and for
    # batch-norm re-estimation of every model built.
    "importance_images": 2_000,
    # Each block timed on 100 random inputs per round, 7 interleaved rounds.
    "block_timing": {"images": 100, "repeats": 7},
    # Whole models timed end to end to fit the line from a sum of blocks to a
    # model's latency: the reference and this many random configurations.
    "calibration_models": 8,
    # Per budget, the `candidates` configurations predicted best are built,
    # fine-tuned one pass over `screen_images` training images with the
    # teacher, and timed on `screen_timing_images` beside the float32
    # reference; the best that meets the budget is fine-tuned with the full
    # recipe; where none does, the prediction is corrected and the next tried,
    # `screen_rounds` times at most.
    "candidates": 3,
    "screen_images": 10_000,
    "screen_rounds": 4,
    "screen_timing_images": 100,
    # Whole models at batch 1 on validation images, interleaved rounds.
    "timing": {"images": 300, "repeats": 7, "threads": 1},
    "calibration_images": 300,          # int8's activation ranges, as Part 4
}
# --quick: a grid of 2 x 2 and one budget that it reaches on every CPU, int8
# faster or not (its smallest model, predicted on an AVX2-only CPU: >= 0.14).
QUICK = {"keeps": [1.0, 0.5], "ranks": [None, 0.5], "budgets": [0.2],
         "train_limit": 10_000, "fine_tune_epochs": 1}
RESULTS_FILE = "part5_budget.json"
SUMMARY = {"median": NUMBER, "min": NUMBER, "max": NUMBER}
SCHEMA = {
    "precision": {"chosen": str, "float32": SUMMARY, "int8": SUMMARY},
    "blocks": Map(Map(SUMMARY)),
    "calibration": {"points": [{"configuration": str, "predicted": NUMBER,
                                "measured": NUMBER}], "slope": NUMBER, "intercept": NUMBER,
                    "r2": NUMBER},
    "sensitivity": Map(Map(NUMBER)),
    "candidates": [{"key": str, "budget": NUMBER, "configuration": str,
                    "predicted_ratio": NUMBER, "ratio": NUMBER,
                    "validation_accuracy": NUMBER}],
    "front": [{"budget": NUMBER, "configuration": str, "predicted_ratio": NUMBER,
               "validation_accuracy": NUMBER, "model": str, "model_sha256": str,
               "tflite": str, "tflite_sha256": str, "test_accuracy?": NUMBER,
               "latency?": {**SUMMARY, "ratio": NUMBER}, "fine_tune_seconds": Nullable(NUMBER)}],
}
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                             epochs=False)
    parser.add_argument("--model", metavar="PATH", help=cli.MODEL_HELP.format("compress"))
    parser.add_argument("--latency-budget", type=cli.open_fraction("a latency budget"),
                        nargs="+", metavar="B",
                        help="shares of the reference's float32 LiteRT time on this machine, "
                             "each in (0, 1) (default: "
                             + " ".join(map(str, CONFIG["budgets"])) + ")")
    parser.add_argument("--latency-budget-ms", type=cli.positive_float("--latency-budget-ms"),
                        nargs="+", metavar="MS", help="budgets in ms per image instead")
    parser.add_argument("--fine-tune-epochs", type=cli.positive_int, metavar="N",
                        help="epochs of the final fine-tune (default: the shared recipe's 3)")
    parser.add_argument("--keeps", type=cli.share("--keeps"), nargs="+", metavar="K",
                        help="shares of each group's channels the search may keep, in (0, 1], "
                             "1 always among them "
                             "(default: " + " ".join(f"{k:g}" for k in CONFIG["keeps"]) + ")")
    parser.add_argument("--ranks", type=cli.share("--ranks", none=True), nargs="+",
                        metavar="R", help="Tucker-2 ranks per conv as shares of its channels, "
                                          "or none (default: none 0.75 0.5 0.25)")
    parser.add_argument("--quick", action="store_true",
                        help="a small search: keeps 1 and 0.5, ranks none and 0.5, budget "
                             "0.2, 10,000 training images, 1 epoch (2 cores: 23-28 min on an "
                             "AVX2-only AMD EPYC; docs/part5.md)")
    args = parser.parse_args(argv)
    if args.latency_budget and args.latency_budget_ms:
        parser.error("--latency-budget and --latency-budget-ms: give one of them")
    if args.quick:
        args.train_limit = args.train_limit or QUICK["train_limit"]
        args.fine_tune_epochs = args.fine_tune_epochs or QUICK["fine_tune_epochs"]
    return args


def run_settings(args, model_sha256, data_id):
    """Everything that changes this part's numbers, this machine included
    (budgets are rows: more of them extend the same run)."""
    from common import machine
    from common.finetune import fine_tune_recipe
    grid = QUICK if args.quick else CONFIG
    keeps = sorted({1.0, *(args.keeps or grid["keeps"])}, reverse=True)
    ranks = [None] + sorted({r for r in args.ranks or grid["ranks"] if r is not None},
                            reverse=True)
    return {"model_sha256": model_sha256, **data_id, "train_limit": args.train_limit,
            "seed": args.seed, **{k: v for k, v in CONFIG.items() if k != "budgets"},
            "keeps": keeps, "ranks": ranks, "machine": machine.identity(),
            "fine_tune": fine_tune_recipe(args.fine_tune_epochs, args.batch_size,
                                          args.precision)}


class Search:
    """What every step of one search shares: the run, the data, the reference
    (as trained and as deployed), its search space and channel scores."""

    def __init__(self, run, splits, reference):
        from common import search, structured
        from common.inference import fold_batchnorm
        self.run, self.splits, self.reference = run, splits, reference
        self.deployed = fold_batchnorm(reference)[0]
        self.space = search.space(reference, run.settings["keeps"], run.settings["ranks"])
        self.convs = [conv.name for conv in self.space.convs]
        with cli.Heartbeat(f"scoring {len(self.space.sizes)} groups' channels by activation "
                           f"({run.settings['importance_images']:,} training images)"):
            self.scores = structured.activation_importance(reference, list(self.space.sizes),
                                                           splits.train[0][:run.settings[
                                                               "importance_images"]])
        self.calibration = self._calibration_images()
        self._reference_flatbuffers = {}

    def _calibration_images(self):
        import numpy as np
        rng = np.random.default_rng(self.run.settings["seed"])
        images = self.splits.train[0]
        return images[rng.choice(len(images), min(self.run.settings["calibration_images"],
                                                  len(images)),
                                 replace=False)]

    def flatbuffers(self, models, precision=None):
        """`models` (batch norms folded) in LiteRT, in the search's precision."""
        from common import deploy
        from common.inference import fold_batchnorm
        precision = precision or self.run.find()["precision"]["chosen"]
        return deploy.to_flatbuffers([(fold_batchnorm(m)[0], precision, self.calibration, False)
                                      for m in models])

    def flatbuffer(self, model, precision=None):
        """One model in LiteRT; the reference converted once per precision (the
        baseline of every latency, a calibration point and the report's rows)."""
        if model is not self.reference:
            return self.flatbuffers([model], precision)[0]
        precision = precision or self.run.find()["precision"]["chosen"]
        if precision not in self._reference_flatbuffers:
            self._reference_flatbuffers[precision] = self.flatbuffers([model], precision)[0]
        return self._reference_flatbuffers[precision]

    def build(self, configuration):
        """The reference under a configuration, batch norm re-estimated (the
        reference itself for the configuration that changes nothing)."""
        from common import search
        from common.evaluation import recalibrate_batchnorm
        if self.unchanged(configuration):
            return self.reference
        model = search.build(self.reference, self.space, configuration, self.scores)
        recalibrate_batchnorm(model,
                              self.splits.train[0][:self.run.settings["importance_images"]])
        return model

    def unchanged(self, configuration):
        from common import search
        return tuple(configuration) == search.identity(self.space)

    def stored(self):
        """The measured tables, read once after each step (the search asks for
        them hundreds of thousands of times), as `self.predict`."""
        from common import search
        stored = self.run.find()
        self.predict = search.Predictor(self.space, stored.get("blocks", {}),
                                        stored.get("sensitivity", {}), stored.get("calibration"))
        return stored


def choose_precision(s):
    """float32 and int8 of the reference timed together: the search uses int8
    where it is faster on this machine, float32 where it is not."""
    from common import deploy
    if "precision" in s.run.find():
        return s.run.find()["precision"]
    flatbuffers = {p: s.flatbuffer(s.reference, p) for p in ("float32", "int8")}
    print("timing the reference in float32 and int8 to choose the precision ...")
    timing = s.run.settings["timing"]
    latency = deploy.latency(flatbuffers, s.splits.validation[0][:timing["images"]], "float32",
                             (1,), timing["repeats"], s.run.settings["seed"])["1"]
    chosen = "int8" if latency["int8"]["median"] < latency["float32"]["median"] else "float32"
    record = {"chosen": chosen, "float32": latency["float32"], "int8": latency["int8"]}
    s.run.update(lambda r: r.update(precision=record))
    print(f"int8 takes {latency['int8']['ratio']:.3f} of float32's time here: searching "
          f"in {chosen}")
    return record


def time_blocks(s):
    """Every conv's block at every width it can have, in the search's
    precision, all of one conv's timed together (stored a conv at a time); a
    block the same as one timed already (same layers, input size and widths:
    the convs of one ResNet stage) takes its timing."""
    import numpy as np

    from common import deploy, search
    done = s.run.find().get("blocks", {})
    todo = [conv for conv in s.convs if conv not in done]
    progress = cli.Sweep(len(todo), "conv's blocks", skipped=len(s.convs) - len(todo))
    rng = np.random.default_rng(s.run.settings["seed"])
    alike = {}   # (signature, block key) -> a timing of this run
    block_timing = s.run.settings["block_timing"]
    for index, conv in enumerate(s.convs):
        signature = search.block_signature(s.deployed, conv)
        for key, summary in s.run.find().get("blocks", {}).get(conv, {}).items():
            alike[signature, key] = summary
        if conv not in todo:
            continue
        height, width = s.reference.get_layer(conv).input.shape[1:3]
        timed, inputs, jobs = {}, {}, []
        for c, f, rank_pair in search.block_widths(s.space, index):
            key = search.block_key(c, f, rank_pair)
            if (signature, key) in alike:
                timed[key] = alike[signature, key]
                continue
            inputs[key] = rng.normal(size=(block_timing["images"], height, width, c)).astype(
                "float32")
            jobs.append((search.block(s.deployed, conv, c, f, rank_pair),
                         s.run.find()["precision"]["chosen"], inputs[key][:20], False))
        if jobs:
            flatbuffers = dict(zip(inputs, deploy.to_flatbuffers(jobs)))
            seconds = deploy.time_per_image(flatbuffers, inputs, (1,), block_timing["repeats"],
                                            s.run.settings["seed"])
            timed.update({key: summarize(seconds[key, 1]) for key in flatbuffers})
        alike.update({(signature, key): summary for key, summary in timed.items()})
        s.run.update(lambda r: r.setdefault("blocks", {}).update({conv: timed}))
        medians = [t["median"] for t in timed.values()]
        progress.done(f"{conv}: {len(timed)} blocks ({len(timed) - len(jobs)} timed at a conv "
                      f"of the same kind), {1e6 * min(medians):.0f} to "
                      f"{1e6 * max(medians):.0f} µs")


def summarize(seconds):
    from common import measure
    summary = measure.summarize_seconds(seconds)
    return {k: summary[k] for k in ("median", "min", "max")}


def calibrate(s):
    """Whole models timed end to end (the reference and random configurations)
    against the sum of their blocks: the line that turns a sum into a latency."""
    import numpy as np

    from common import deploy, search
    if "calibration" in s.run.find():
        return s.run.find()["calibration"]
    rng = np.random.default_rng(s.run.settings["seed"])
    configurations = [search.identity(s.space)] + [
        search.random_configuration(s.space, rng)
        for _ in range(s.run.settings["calibration_models"])]
    flatbuffers = {}
    progress = cli.Sweep(len(configurations), "whole model built and converted")
    for configuration in configurations:
        key = search.configurations_key(configuration)
        flatbuffers[key] = s.flatbuffer(s.build(configuration))
        progress.done(f"{shown(key)}: {len(flatbuffers[key]):,} bytes")
    print(f"timing {len(flatbuffers)} whole models end to end to fit the blocks' sum ...")
    timing = s.run.settings["timing"]
    seconds = deploy.time_per_image(flatbuffers, s.splits.validation[0][:timing["images"]],
                                    (1,), timing["repeats"], s.run.settings["seed"])
    points = []
    for configuration in configurations:
        key = search.configurations_key(configuration)
        points.append({"configuration": key, "measured": float(np.median(seconds[key, 1])),
                       "predicted": s.predict.blocks_sum(configuration)})
    slope, intercept, r2 = search.fit_line([p["predicted"] for p in points],
                                           [p["measured"] for p in points])
    line = {"points": points, "slope": slope, "intercept": intercept, "r2": r2}
    s.run.update(lambda r: r.update(calibration=line))
    print(f"whole-model latency = {slope:.3f} x (sum of blocks) {1e6 * intercept:+.1f} µs, "
          f"R^2 = {r2:.3f} over {len(points)} models")
    return line


def sensitivity(s):
    """Each choice's accuracy loss alone: the reference with only that conv
    changed (and its group's other convs, which keep the same share), batch
    norm re-estimated, on the validation split (a conv at a time)."""
    from common import search
    from common.evaluation import accuracy_on
    done = s.run.find().get("sensitivity", {})
    todo = [conv for conv in s.convs if conv not in done]
    progress = cli.Sweep(len(todo), "conv's choices", skipped=len(s.convs) - len(todo))
    base = accuracy_on(s.reference, s.splits.validation) if todo else None
    for index, conv in enumerate(s.convs):
        if conv not in todo:
            continue
        drops = {}
        for choice in search.measured_alone(s.space, index):
            drops[search.configurations_key([choice])] = base - accuracy_on(
                s.build(search.alone(s.space, index, choice)), s.splits.validation)
        s.run.update(lambda r: r.setdefault("sensitivity", {}).update({conv: drops}))
        progress.done(f"{conv}: validation points lost " + ", ".join(
            f"{k} {100 * v:.1f}" for k, v in drops.items()))


def candidates(s, budget):
    """The configurations predicted to lose least within `budget` (a share of
    the float32 reference's time), slowest first."""
    base = s.run.find()["precision"]["float32"]["median"]
    return s.predict.candidates(budget * base, s.run.settings["resolution_steps"])


def screen(s, budget):
    """The best few configurations within `budget`, each built, fine-tuned one
    pass over the screen's training images (teacher: the reference), and
    measured in the deployed precision: validation accuracy in LiteRT and
    latency beside the float32 reference. Returns the best that meets the
    budget (its row). Where none does, the prediction is corrected by how far
    the measured latencies were off (their median ratio to the predicted) and
    the next few are tried, a few rounds at most (see CONFIG)."""
    from common import search
    stored = {row["key"]: row for row in s.run.find().get("candidates", [])}
    rows, factor = [], 1.0   # the rows considered: the best-predicted of each round
    for _ in range(s.run.settings["screen_rounds"]):
        ranked = [c for c in candidates(s, budget / factor)
                  if f"{budget:g} {search.configurations_key(c)}" not in
                  {row["key"] for row in rows}]
        for configuration in ranked[:s.run.settings["candidates"]]:
            key = f"{budget:g} {search.configurations_key(configuration)}"
            rows.append(stored.get(key) or measure_candidate(s, budget, configuration))
        feasible = [row for row in rows if row["ratio"] <= budget]
        if feasible:
            return max(feasible, key=lambda row: row["validation_accuracy"])
        if not ranked:
            break
        factor = search.aim_lower(factor, rows)  # the measured were slower than predicted
    print(f"  budget {budget:g}: " + ("no configuration measured within it" if rows else
          "no configuration of the grid (--keeps, --ranks) is predicted within it"))
    return None


def measure_candidate(s, budget, configuration):
    """One configuration built, fine-tuned briefly and measured (see `screen`);
    its row, stored."""
    from common import deploy, finetune, search
    from common.evaluation import accuracy
    key = f"{budget:g} {search.configurations_key(configuration)}"
    screen_train = tuple(part[:s.run.settings["screen_images"]] for part in s.splits.train)
    tune = not s.unchanged(configuration)
    print(f"  budget {budget:g}: {shown(key.split(' ', 1)[1])}: built, "
          + (f"fine-tuned one pass over {len(screen_train[0]):,} training images, " if tune
             else "") + "converted and timed ...")
    model = s.build(configuration)
    if tune:
        finetune.fine_tune(model, screen_train, None, epochs=1, teacher=s.reference,
                           seed=s.run.settings["seed"], **{
                               k: v for k, v in s.run.settings["fine_tune"].items()
                               if k != "epochs"})
    flatbuffer, reference = s.flatbuffer(model), s.flatbuffer(s.reference, "float32")
    latency = deploy.latency({"reference": reference, "candidate": flatbuffer},
                             s.splits.validation[0][:s.run.settings["screen_timing_images"]],
                             "reference", (1,), s.run.settings["timing"]["repeats"],
                             s.run.settings["seed"],
                             progress=False)["1"]
    base = s.run.find()["precision"]["float32"]["median"]
    row = {"key": key, "budget": budget, "configuration": key.split(" ", 1)[1],
           "predicted_ratio": s.predict.seconds(configuration) / base,
           "ratio": latency["candidate"]["ratio"],
           "validation_accuracy": accuracy(deploy.predict(flatbuffer, s.splits.validation[0]),
                                           s.splits.validation[1])}
    s.run.upsert("candidates", "key", row)
    print(f"  budget {budget:g}: {shown(row['configuration'])}: "
          f"predicted x{row['predicted_ratio']:.3f}, measured x{row['ratio']:.3f}, "
          f"validation {row['validation_accuracy']:.4f}")
    return row


def finish(s, budget, chosen):
    """The chosen configuration fine-tuned with the full recipe (resumable),
    saved as .keras and .tflite, its validation accuracy in LiteRT: the row
    of `budget` on the front. A configuration another budget chose already
    is reused, its files checked."""
    import time

    from common import deploy, evaluation, finetune, measure, search
    from common.results import file_digest
    name = f"budget_{budget:g}"
    same = [r for r in s.run.find().get("front", [])
            if r["configuration"] == chosen["configuration"]
            and runs.model_problem(r) is None and tflite_problem(r) is None]
    if same:
        row = {**same[0], "budget": budget}
        s.run.upsert("front", "budget", {k: v for k, v in row.items() if k not in (
            "test_accuracy", "latency")})
        return
    configuration = search.parse_configuration(chosen["configuration"])
    model, seconds = s.build(configuration), None
    if s.unchanged(configuration):  # the reference itself, in the deployed precision
        saved = {"model": s.run.find().get("meta", {}).get("model", ""),
                 "model_sha256": s.run.settings["model_sha256"]}
    else:
        start = time.perf_counter()
        finetune.fine_tune(model, s.splits.train, s.splits.validation, teacher=s.reference,
                           seed=s.run.settings["seed"], backup_dir=os.path.join(
                               s.run.paths["checkpoints"], f"{name}-{s.run.label}"),
                           **s.run.settings["fine_tune"])
        seconds = round(time.perf_counter() - start, 1)
        saved = s.run.save_model(model, name)
    flatbuffer, flops = s.flatbuffer(model), measure.count_flops(model)
    path = s.run.model_file(name, ".tflite")
    with open(path, "wb") as f:
        f.write(flatbuffer)
    row = {"budget": budget, "configuration": chosen["configuration"],
           "predicted_ratio": chosen["predicted_ratio"], "screened_ratio": chosen["ratio"],
           "precision": s.run.find()["precision"]["chosen"],
           "validation_accuracy": evaluation.accuracy(
               deploy.predict(flatbuffer, s.splits.validation[0]), s.splits.validation[1]),
           "params": int(model.count_params()), "flops": flops,
           "flops_ratio": flops / measure.count_flops(s.reference),
           "fine_tune_seconds": seconds,
           **saved, "tflite": cli.shown_path(path),
           "tflite_sha256": file_digest(path), **deploy.sizes(flatbuffer),
           "layers": {conv: {"keep": k, "rank": r, "widths": list(w[:2])} for conv, (k, r), w
                      in zip(s.convs, configuration, search.widths(s.space, configuration))}}
    s.run.upsert("front", "budget", row)
    print(f"budget {budget:g}: {shown(row['configuration'])}: validation "
          f"{row['validation_accuracy']:.4f} in LiteRT {row['precision']}")


def shown(configuration):
    """A configuration as printed: whole for a few convs, else counted."""
    from common import search
    if len(configuration) <= 72:
        return configuration
    choices = search.parse_configuration(configuration)
    return (f"{len(choices)} convs, {sum(k < 1 for k, _ in choices)} narrowed, "
            f"{sum(r is not None for _, r in choices)} decomposed")


def tflite_problem(row):
    """Why the .tflite file a front row names cannot be used, or None."""
    from common.results import file_digest
    path = runs.resolve(row.get("tflite", ""))
    if not os.path.isfile(path) or file_digest(path) != row.get("tflite_sha256"):
        return f"{row.get('tflite')} is missing or has changed"
    return None


def report(s, budgets):
    """The report: each final model's test accuracy in LiteRT (read once per
    file), and all of them timed end to end together with the reference in
    float32 and int8, ratios to its float32 time."""
    from common import deploy
    from common.evaluation import accuracy
    rows = [r for r in s.run.find().get("front", []) if r["budget"] in budgets]
    if not rows:
        return
    for row in rows:
        if "test_accuracy" not in row:
            with open(runs.resolve(row["tflite"]), "rb") as f:
                test = s.splits.test()
                row = {**row, "test_accuracy": accuracy(deploy.predict(f.read(), test[0]),
                                                        test[1])}
            s.run.upsert("front", "budget", row)
    flatbuffers = {"reference float32": s.flatbuffer(s.reference, "float32"),
                   "reference int8": s.flatbuffer(s.reference, "int8")}
    for row in rows:
        with open(runs.resolve(row["tflite"]), "rb") as f:
            flatbuffers.setdefault(row["tflite_sha256"], f.read())
    print(f"timing {len(flatbuffers)} flatbuffers end to end, interleaved ...")
    timing = s.run.settings["timing"]
    latency = deploy.latency(flatbuffers, s.splits.validation[0][:timing["images"]],
                             "reference float32", (timing["threads"],), timing["repeats"],
                             s.run.settings["seed"])[str(timing["threads"])]
    for row in s.run.find()["front"]:
        if row["tflite_sha256"] in latency:
            s.run.upsert("front", "budget", {**row, "latency": latency[row["tflite_sha256"]]})
    s.run.update(lambda r: r.update(reference_latency={
        k: latency[k] for k in ("reference float32", "reference int8", deploy.CALL_OVERHEAD)}))


def plot_figures(run, figures_dir, results_dir):
    from common import plots_deployment as plots
    from common.results import runs_alike
    if not run.get("front"):
        return
    part4 = runs_alike(os.path.join(results_dir, "part4.json"), run["settings"],
                       ("model_sha256", "machine"))
    path = os.path.join(figures_dir, "part5_budget_front.png")
    print("wrote", plots.plot_budget_front(run, part4[0] if part4 else None, path))
    print("wrote", plots.plot_budget_choices(run, os.path.join(
        figures_dir, "part5_budget_choices.png")))
    print("wrote", plots.plot_latency_prediction(run, os.path.join(
        figures_dir, "part5_budget_latency_model.png")))


def searchable(model, path):
    """ValueError (one line, naming the file) for a model the search cannot
    take: one with no conv whose channels can be removed."""
    from common import search
    try:
        search.space(model, CONFIG["keeps"], CONFIG["ranks"])
    except ValueError as err:
        raise ValueError(f"{cli.shown_path(path)}: {err}") from None


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only:
        return runs.plot_only(RESULTS_FILE, args, functools.partial(
            plot_figures, results_dir=os.path.join(args.output_dir or cli.REPO_ROOT, "results")),
            SCHEMA)
    run, splits, model_path = runs.start(
        RESULTS_FILE, args, lambda digest, data_id: run_settings(args, digest, data_id), SCHEMA,
        check=searchable)
    from common import report as tables
    s = Search(run, splits, run.model)
    precision = choose_precision(s)
    time_blocks(s)
    s.stored()
    calibrate(s)
    sensitivity(s)
    s.stored()
    budgets = args.latency_budget or (
        [ms / 1e3 / precision["float32"]["median"] for ms in args.latency_budget_ms]
        if args.latency_budget_ms else QUICK["budgets"] if args.quick else CONFIG["budgets"])
    unmet = []
    for i, budget in enumerate(budgets, start=1):
        print(f"budget {i}/{len(budgets)}: {budget:g} of the float32 reference's time")
        done = next((r for r in run.find().get("front", []) if r["budget"] == budget), None)
        if done and runs.model_problem(done) is None and tflite_problem(done) is None \
                and not run.force:
            print(f"  done: {shown(done['configuration'])}, reusing {done['tflite']}")
            continue
        chosen = screen(s, budget)
        if chosen:
            finish(s, budget, chosen)
        else:
            unmet.append(budget)
    report(s, budgets)
    print(tables.part5_table(run.find()))
    plot_figures(run.find(), run.paths["figures"], run.paths["results"])
    if unmet:   # a budget no model met is a failed request, not a result
        raise ValueError(f"no model found within budget {', '.join(f'{b:g}' for b in unmet)} "
                         "of the reference's float32 time on this machine (why: above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
