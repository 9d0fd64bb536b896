"""Part 1: how do pooling, learning rate and data augmentation shape a small CNN
trained on CIFAR-10?

Reproduces steps 4-7 of the study: a plain CNN (no pooling) at Adam lr 0.001
saturates near 59% test accuracy; lr 0.1 and 1 fail to train; 2x2 max pooling
learns faster and ends higher; flip + translate augmentation keeps improving
over 50 epochs. Each experiment's per-epoch records go to results/part1.json,
its model to models/part1_<name>.keras and the figures to figures/.

    python part1_cnn.py                          # all five experiments (~1 h on 2 cores)
    python part1_cnn.py --experiments baseline --epochs 2 --train-limit 2000
    python part1_cnn.py --plot-only              # redraw figures from the JSON
    python part1_cnn.py --experiments reference  # the ~90% model of Parts 2 and 3 (~30 min)

An interrupted run resumes from its last finished epoch when started again;
finished experiments are skipped unless --force.
"""

import os
import shutil

# TensorFlow is imported inside the functions that need it, so that --help and
# --plot-only answer at once.
from common import cli, precision
from common.results import ResultsStore, run_metadata, settings_label, write_json

# ---- configuration ---------------------------------------------------------
# Every experiment uses Adam and categorical cross-entropy on [0, 1] pixels, as
# in the study. model: "plain" (no pooling) | "pooled" | "augmented".
EXPERIMENTS = {
    "baseline": {"step": 4, "model": "plain", "learning_rate": 1e-3, "epochs": 20},
    "lr0.1":    {"step": 5, "model": "plain", "learning_rate": 0.1, "epochs": 20},
    "lr1":      {"step": 5, "model": "plain", "learning_rate": 1.0, "epochs": 20},
    "maxpool":  {"step": 6, "model": "pooled", "learning_rate": 1e-3, "epochs": 20},
    # Augmentation slows fitting of the training set, so it gets 50 epochs.
    "augment":  {"step": 7, "model": "augmented", "learning_rate": 1e-3, "epochs": 50,
                 "max_shift": 0.125},   # shifts of up to 4 px, and flips
}
# 64 rather than Keras' default 32: ~1.5x the images/s on a 2-core CPU, and the
# study's findings do not depend on it.
BATCH_SIZE = 64
DEFAULT_EXPERIMENTS = list(EXPERIMENTS)  # the study's steps 4-7

# The reference model of Parts 2 and 3 (~90%: 89.15%, 90.07% with flip TTA), with
# airbench94's recipe (github.com/KellerJordan/cifar10-airbench) in Keras.
REFERENCE = {
    "step": "reference", "model": "reference",
    # airbench94 uses 64/256/256; on a 2-core CPU (bf16) 192 trains at 2x the
    # images/s of 256 (396 vs 199 img/s), so that 15 epochs fit in 30 min.
    "widths": [64, 192, 192],
    # airbench94 trains 9.9; more make up for width 192 and the JPEG copy's
    # lost detail, and 15 fit in 30 min on 2 cores (27.9 min measured).
    "epochs": 15,
    "batch_size": 512,          # large batches keep both CPU cores busy
    "optimizer": "sgd_nesterov",
    # airbench's lr 11.5 per 1024 summed examples, momentum 0.85, is 1.5 for a
    # mean loss at batch 1024: 0.75 at 512 (linear scaling).
    "peak_learning_rate": 0.75,
    "momentum": 0.85,
    # Its weight decay (0.0153 per 1024, through momentum) as Keras' decoupled
    # decay per step: 0.0153 * 512 / 7853 / (1 - 0.85) / 0.75.
    "weight_decay": 0.009,
    "label_smoothing": 0.2,     # airbench94's
    # Batch-norm shifts learn 64x faster than the weights, as in airbench
    # (a reparametrisation, models.ScaledShift; the saved model is plain BN).
    "bn_shift_lr_multiplier": 64,
    "max_shift": 2 / 32,        # translate up to 2 pixels, and flip
    # --precision "auto": bf16 compute where the hardware has bfloat16 units
    # (common/precision.py); pixels, whitening and the saved model stay float32.
    "precision": "auto",
    "batchnorm_epsilon": 1e-5,  # not Keras' 1e-3; see models.reference_cnn
    # airbench94's lookahead: from epoch 3, every 5 steps the weights move to
    # their running average, whose memory grows as training ends.
    "lookahead": {"start_epoch": 3, "every": 5, "decay": 0.95, "power": 3.0},
    # Test accuracy after every 5th epoch only: a pass over the test set costs
    # ~6% of an epoch, and the budget is 30 minutes.
    "test_every": 5,
}
EXPERIMENTS["reference"] = REFERENCE
RESULTS_FILE = "part1.json"
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--experiments", nargs="+", metavar="NAME",
                        choices=list(EXPERIMENTS), default=DEFAULT_EXPERIMENTS,
                        help=f"which to run: {', '.join(EXPERIMENTS)} "
                             f"(default: {' '.join(DEFAULT_EXPERIMENTS)})")
    return parser.parse_args(argv)


def experiment_config(name, args):
    """The full configuration of one run; a stored run with another config is redone."""
    config = dict(EXPERIMENTS[name])
    config.update(epochs=args.epochs or config["epochs"],
                  batch_size=args.batch_size or config.get("batch_size", BATCH_SIZE),
                  train_limit=args.train_limit, seed=args.seed)
    if "precision" in config:  # recorded as the policy it resolves to on this machine
        config["precision"] = precision.resolve(args.precision)
    config.setdefault("optimizer", "adam")
    config.setdefault("loss", "categorical_crossentropy")
    return config


def build_model(config, train_images):
    """(model to fit, classifier to save, extra callbacks); the same model except
    for the reference, whose flip/translate layers are trained through but not saved."""
    import keras

    from common import models
    if config["model"] == "plain":
        model = models.plain_cnn()
    elif config["model"] in ("pooled", "augmented"):
        model = models.pooled_cnn(augment=config["model"] == "augmented",
                                  max_shift=config.get("max_shift", 0), seed=config["seed"])
    else:
        return build_reference(config, train_images)
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model, model, []


def build_reference(config, train_images):
    import keras

    from common import models
    from common.training import Lookahead, one_cycle
    # Whitening statistics from 5000 images: enough for a 12x12 covariance.
    classifier = models.reference_cnn(
        config["widths"], whitening=models.whitening_kernel(train_images[:5000]),
        shift_lr_multiplier=config["bn_shift_lr_multiplier"],
        bn_epsilon=config["batchnorm_epsilon"])
    trainer = keras.Sequential([
        keras.Input(classifier.input_shape[1:]),
        models.augmentation(config["max_shift"], seed=config["seed"], dtype="float32"),
        classifier])
    steps = config["epochs"] * -(-len(train_images) // config["batch_size"])
    optimizer = keras.optimizers.SGD(
        one_cycle(config["peak_learning_rate"], steps), momentum=config["momentum"],
        nesterov=True, weight_decay=config["weight_decay"])
    trainer.compile(optimizer=optimizer, metrics=["accuracy"],
                    loss=keras.losses.CategoricalCrossentropy(
                        label_smoothing=config["label_smoothing"]))
    callbacks = [Lookahead(steps, **config["lookahead"])] if config.get("lookahead") else []
    return trainer, classifier, callbacks


def save_reference(classifier, config, entry, test, paths):
    """models/reference.keras in float32, and models/reference.json beside it."""
    from common import models
    from common.training import accuracy, predict_flip_tta, predict_flip_translate_tta
    model = models.export_reference(classifier, config["widths"])
    model.save(os.path.join(paths["models"], "reference.keras"))
    x_test, y_test = test
    info = {"test_accuracy": accuracy(model.predict(x_test, batch_size=1000, verbose=0), y_test),
            "test_accuracy_flip_tta": accuracy(predict_flip_tta(model, x_test), y_test),
            "test_accuracy_flip_translate_tta": accuracy(
                predict_flip_translate_tta(model, x_test), y_test),
            "training_seconds": round(sum(e["seconds"] for e in entry["epochs"]), 1),
            "config": config, **entry["meta"]}
    write_json(os.path.join(paths["models"], "reference.json"), info)
    return info


def run_experiment(name, config, train, test, paths, store, settings):
    """Train one experiment, resuming if its checkpoint is there; returns its entry.
    Each epoch's record is stored as it ends."""
    import keras

    from common.training import fit_resumable, merge_epoch, set_seed

    set_seed(config["seed"])
    keras.mixed_precision.set_global_policy(config.get("precision", "float32"))
    model, classifier, callbacks = build_model(config, train[0])

    def on_record(record):
        store.update(settings, lambda run: run["experiments"][name].update(
            epochs=merge_epoch(run["experiments"][name]["epochs"], record)))

    fit_resumable(model, train, test, epochs=config["epochs"],
                  batch_size=config["batch_size"],
                  backup_dir=checkpoint_dir(paths, name, settings),
                  on_record=on_record, callbacks=callbacks,
                  test_every=config.get("test_every", 1))
    entry = store.find(settings)["experiments"][name]
    if name == "reference":
        info = save_reference(classifier, config, entry, test, paths)
        print(f"reference: {info['test_accuracy']:.4f} test accuracy "
              f"({info['test_accuracy_flip_tta']:.4f} with flip TTA, "
              f"{info['test_accuracy_flip_translate_tta']:.4f} with flip + translate TTA), "
              f"{info['training_seconds']:.0f} s of training")
    else:
        classifier.save(os.path.join(paths["models"], f"part1_{name}.keras"))

    return store.update(settings, lambda run: run["experiments"][name].update(
        final_test_accuracy=entry["epochs"][-1]["test_accuracy"], complete=True)
    )["experiments"][name]


def checkpoint_dir(paths, name, settings):
    """Keras' BackupAndRestore folder of one experiment of one run."""
    return os.path.join(paths["checkpoints"], f"part1_{name}-{settings_label(settings)}")


def run_settings(args, data_id):
    """What every experiment of a run shares; results are keyed by it."""
    return {**data_id, "train_limit": args.train_limit, "seed": args.seed,
            "epochs": args.epochs, "batch_size": args.batch_size,
            "precision": precision.resolve(args.precision)}


def plot_figures(run, figures_dir):
    from common.plots import PART1_FIGURES
    experiments = run.get("experiments", {})
    for filename, (plot, needs) in PART1_FIGURES.items():
        missing = [n for n in needs if not experiments.get(n, {}).get("epochs")]
        if missing:
            print(f"{filename} not drawn: it needs {' and '.join(needs)} "
                  f"(run --experiments {' '.join(missing)})")
        else:
            print("wrote", plot(experiments, os.path.join(figures_dir, filename)))


def main(argv=None):
    args = parse_args(argv)
    paths = cli.output_paths(args.output_dir)
    store = ResultsStore(os.path.join(paths["results"], RESULTS_FILE))
    if args.plot_only:
        return cli.plot_every_run(store, paths["figures"], plot_figures)
    from common.data import load_for_run
    train, test, source, data_id = load_for_run(args.data_dir, args.train_limit)
    cli.load_backend()
    settings = run_settings(args, data_id)
    meta = run_metadata(source)
    stored = (store.find(settings) or {}).get("experiments", {})  # name -> entry
    configs = {name: experiment_config(name, args) for name in args.experiments}
    changed = [n for n in configs if n in stored and stored[n]["config"] != configs[n]]
    if changed and not args.force:
        raise ValueError(f"{store.path}: {', '.join(changed)} stored with another "
                         "configuration; --force replaces it (a backup is kept), "
                         "--output-dir DIR writes elsewhere")
    cli.back_up_if_forced(store, settings, args.force and bool(set(stored) & set(configs)))
    for number, (name, config) in enumerate(configs.items(), start=1):
        entry = None if args.force else stored.get(name)
        if entry and entry["complete"]:
            print(f"{name}: done ({entry['final_test_accuracy']:.4f}), skipped; --force reruns it")
            continue
        if entry:
            print(f"{name}: resuming after epoch {len(entry['epochs'])}")
        else:
            shutil.rmtree(checkpoint_dir(paths, name, settings), ignore_errors=True)
            entry = {"config": config, "epochs": [], "complete": False, "meta": meta}
            store.update(settings, lambda run, name=name, entry=entry:
                         run.setdefault("experiments", {}).update({name: entry}), meta)
        print(f"{name} ({number}/{len(configs)}): step {config['step']}, {config['model']} CNN, "
              f"{config['optimizer']}, {config['epochs']} epochs, {len(train[0])} training images")
        entry = run_experiment(name, config, train, test, paths, store, settings)
        print(f"{name}: final test accuracy {entry['final_test_accuracy']:.4f}")

    plot_figures(store.find(settings) or {}, store.figures_dir(paths["figures"], settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
