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
    python part1_cnn.py --experiments resnet56 --architecture M.keras --epochs 74  # Scratch-B

An interrupted run resumes from its last finished epoch when started again;
finished experiments are skipped unless --force.
"""

import os
import shutil

# TensorFlow is imported inside the functions that need it, so that --help and
# --plot-only answer at once.
from common import cli, precision, runs
from common.results import NUMBER, Map, Nullable, run_metadata, write_json

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

# The reference model of Parts 2-4, with airbench94's recipe
# (github.com/KellerJordan/cifar10-airbench) in Keras, trained on the training
# images less the validation split (common/data.py), which it is evaluated on
# after every epoch; the test set is read once, when it is saved.
REFERENCE = {
    "step": "reference", "model": "reference",
    "widths": [64, 256, 256],   # airbench94's
    # airbench94 trains 9.9 epochs on the official images; the JPEG copy has lost
    # detail, and 22 is what fits in 30 min on 2 cores with AMX (bf16: 73 s per
    # epoch of 45,000 images, measured).
    "epochs": 22,
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
    "validation": True,         # hold out the validation split (steps 4-7 train on all)
}
EXPERIMENTS["reference"] = REFERENCE

# He et al. 2016's CIFAR ResNets (models.cifar_resnet), the structured-pruning
# papers' benchmark, with their optimizer (SGD, momentum 0.9, batch 128, no
# label smoothing) on a one-cycle schedule that fits 2 CPU cores: their 164
# epochs take ~11 h here. Held out and saved like the reference.
RESNET = {
    "step": "resnet", "model": "resnet", "depth": 56,
    # 30: what fits in 75 min on 2 cores with avx512_bf16 (AMD EPYC, bf16:
    # 145-151 s per epoch of 45,000 images, n = 2 epochs).
    "epochs": 30,
    "batch_size": 128,
    "optimizer": "sgd_nesterov",
    "peak_learning_rate": 0.2,  # 0.1 at batch 128 in He et al.; one-cycle warms up to 2x
    "momentum": 0.9,
    # PyTorch's weight_decay 5e-4 (short schedules'; He et al. 1e-4 over 164
    # epochs) is the L2 loss 2.5e-4 * sum(w**2) on conv and Dense kernels.
    "l2": 2.5e-4,
    "max_shift": 4 / 32,        # translate up to 4 pixels, and flip (He et al.)
    "precision": "auto",
    "validation": True,
}
EXPERIMENTS["resnet56"] = RESNET
EXPERIMENTS["resnet20"] = dict(RESNET, depth=20)   # the quick form
RESULTS_FILE = "part1.json"
SCHEMA = {"experiments": Map({
    "config": dict, "complete": bool,
    "epochs": [{"epoch": int, "train_accuracy": NUMBER, "train_loss": NUMBER,
                "seconds": NUMBER, "test_accuracy?": Nullable(NUMBER),
                "validation_accuracy?": Nullable(NUMBER)}]})}
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--experiments", nargs="+", metavar="NAME",
                        choices=list(EXPERIMENTS), default=DEFAULT_EXPERIMENTS,
                        help=f"which to run: {', '.join(EXPERIMENTS)} "
                             f"(default: {' '.join(DEFAULT_EXPERIMENTS)})")
    parser.add_argument("--architecture", metavar="PATH",
                        help="train this model's architecture from fresh weights with a resnet "
                             "experiment's recipe (e.g. a pruned ResNet-56: Liu et al. 2019's "
                             "Scratch-B control); saved as models/scratch-<file name>.keras")
    args = parser.parse_args(argv)
    if args.architecture:
        if any(EXPERIMENTS[name]["model"] != "resnet" for name in args.experiments):
            parser.error("--architecture takes a resnet experiment's recipe: --experiments "
                         "resnet56 or resnet20")
        if len(args.experiments) != 1:
            parser.error("--architecture: give one experiment")
        if not os.path.isfile(args.architecture):
            parser.error(f"--architecture {args.architecture}: no such file")
    return args


def experiment_name(name, args):
    """The experiment's name in results and model files: a scratch run is
    named after its architecture's file."""
    if not args.architecture:
        return name
    return "scratch-" + os.path.splitext(os.path.basename(args.architecture))[0]


def experiment_config(name, args, validation=None):
    """The full configuration of one run; a stored run with another config is redone.
    `validation`: the validation split's record (`data.split_validation`), for
    the experiments that hold it out."""
    config = dict(EXPERIMENTS[name])
    if config.get("validation"):
        config["validation"] = validation
    config.update(epochs=args.epochs or config["epochs"],
                  batch_size=args.batch_size or config.get("batch_size", BATCH_SIZE),
                  train_limit=args.train_limit, seed=args.seed)
    if "precision" in config:  # recorded as the policy it resolves to on this machine
        config["precision"] = precision.resolve(args.precision)
    if args.architecture:
        from common.results import file_digest
        config.update(architecture=cli.shown_path(args.architecture),
                      architecture_sha256=file_digest(args.architecture))
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
    elif config["model"] == "resnet":
        return build_resnet(config, len(train_images))
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


def build_resnet(config, train_size):
    """A CIFAR ResNet behind flip/translate layers, SGD on a one-cycle schedule."""
    import keras

    from common import models
    from common.training import one_cycle
    if config.get("architecture"):   # Scratch-B: a given architecture, fresh weights
        classifier = models.reinitialized(
            models.load_classifier(runs.resolve(config["architecture"])),
            keras.mixed_precision.global_policy().name, config["l2"])
    else:
        classifier = models.cifar_resnet(config["depth"], weight_decay=config["l2"])
    trainer = keras.Sequential([
        keras.Input(classifier.input_shape[1:]),
        models.augmentation(config["max_shift"], seed=config["seed"], dtype="float32"),
        classifier])
    steps = config["epochs"] * -(-train_size // config["batch_size"])
    trainer.compile(optimizer=keras.optimizers.SGD(
        one_cycle(config["peak_learning_rate"], steps, end=0.0),
        momentum=config["momentum"], nesterov=True),
        loss="categorical_crossentropy", metrics=["accuracy"])
    return trainer, classifier, []


def export_classifier(classifier, config):
    """The float32 form of a trained classifier, standard layers only, no
    regularizer: what Parts 2-5 load."""
    from common import models
    if config["model"] == "reference":
        return models.export_reference(classifier, config["widths"])
    if config.get("architecture"):
        model = models.reinitialized(classifier, "float32")
        model.set_weights(classifier.get_weights())
        return model
    with precision.policy("float32"):
        model = models.cifar_resnet(config["depth"])
    model.set_weights(classifier.get_weights())
    return model


def save_reference(classifier, config, entry, splits, paths, name="reference"):
    """models/<name>.keras in float32, and models/<name>.json beside it:
    its accuracy on the validation split, then (the report) on the test set,
    plain and with test-time augmentation."""
    from common.results import file_digest
    from common.evaluation import accuracy, predict_flip_translate_tta, predict_flip_tta
    model = export_classifier(classifier, config)
    path = os.path.join(paths["models"], f"{name}.keras")
    model.save(path)
    info = {"validation_accuracy": accuracy(
        model.predict(splits.validation[0], batch_size=1000, verbose=0), splits.validation[1])}
    x_test, y_test = splits.test()
    info.update({
        "test_accuracy": accuracy(model.predict(x_test, batch_size=1000, verbose=0), y_test),
        "test_accuracy_flip_tta": accuracy(predict_flip_tta(model, x_test), y_test),
        "test_accuracy_flip_translate_tta": accuracy(
            predict_flip_translate_tta(model, x_test), y_test),
        "training_seconds": round(sum(e["seconds"] for e in entry["epochs"]), 1),
        "training_images": len(splits.train[0]), "model_sha256": file_digest(path),
        "data": splits.data_id, "config": config, **entry["meta"]})
    write_json(os.path.join(paths["models"], f"{name}.json"), info)
    return info


def run_experiment(run, name, config, splits):
    """Train one experiment, resuming if its checkpoint is there; returns its entry.
    Each epoch's record is stored as it ends. Steps 4-7 are evaluated on the
    test set after every epoch (the study's curves); the reference on the
    validation split, the test set read once when it is saved."""
    from common.training import fit_resumable, merge_epoch, set_seed

    set_seed(config["seed"])
    # the policy is global in Keras: set for this model, put back after it
    with precision.policy(config.get("precision", "float32")):
        model, classifier, callbacks = build_model(config, splits.train[0])
        held_out = "validation" if splits.validation is not None else "test"

        def on_record(record):
            run.update(lambda stored: stored["experiments"][name].update(
                epochs=merge_epoch(stored["experiments"][name]["epochs"], record)))

        fit_resumable(model, splits.train,
                      splits.validation if held_out == "validation" else splits.test(),
                      epochs=config["epochs"], batch_size=config["batch_size"],
                      backup_dir=os.path.join(run.paths["checkpoints"],
                                              f"part1_{name}-{run.label}"),
                      on_record=on_record, callbacks=callbacks, evaluated_on=held_out)
        entry = run.find()["experiments"][name]
        final = {f"final_{held_out}_accuracy": entry["epochs"][-1][f"{held_out}_accuracy"]}
        if config.get("validation"):
            info = save_reference(classifier, config, entry, splits, run.paths, name)
            final["final_test_accuracy"] = info["test_accuracy"]
            print(f"{name}: {info['validation_accuracy']:.4f} validation accuracy, "
                  f"{info['test_accuracy']:.4f} test accuracy "
                  f"({info['test_accuracy_flip_tta']:.4f} with flip TTA, "
                  f"{info['test_accuracy_flip_translate_tta']:.4f} with flip + translate TTA), "
                  f"{info['training_seconds']:.0f} s of training")
        else:
            classifier.save(os.path.join(run.paths["models"], f"part1_{name}.keras"))
        return run.update(lambda stored: stored["experiments"][name].update(
            **final, complete=True))["experiments"][name]


def run_settings(args, data_id):
    """What every experiment of a run shares; results are keyed by it."""
    return {**data_id, "train_limit": args.train_limit, "seed": args.seed,
            "epochs": args.epochs, "batch_size": args.batch_size,
            # steps 4-7 train in float32 whatever --precision says (the study's)
            "reference_precision": precision.resolve(args.precision)}


def plot_figures(run, figures_dir):
    from common.plots_training import PART1_FIGURES
    experiments = run.get("experiments", {})
    for filename, (plot, needs) in PART1_FIGURES.items():
        missing = [n for n in needs if not experiments.get(n, {}).get("epochs")]
        if len(missing) == len(needs):
            continue  # none of its experiments run: not asked for
        if missing:
            print(f"{filename} not drawn: it needs {' and '.join(needs)} "
                  f"(run --experiments {' '.join(missing)})")
        else:
            print("wrote", plot(run, os.path.join(figures_dir, filename)))


def planned(run, args, held_out):
    """Each experiment asked for with its configuration, checked against what
    is stored: one stored with another configuration is refused unless --force
    (which starts it again; the run's file is backed up first)."""
    split = {key: held_out().data_id[key] for key in ("validation", "validation_sha256")} \
        if any(EXPERIMENTS[name].get("validation") for name in args.experiments) else None
    configs = {experiment_name(name, args): experiment_config(name, args, split)
               for name in args.experiments}
    stored = run.find().get("experiments", {})
    changed = [n for n in configs if n in stored and stored[n]["config"] != configs[n]]
    if changed and not args.force:
        raise ValueError(f"{run.store.path}: {', '.join(changed)} stored with another "
                         "configuration; --force replaces it (a backup is kept), "
                         "--output-dir DIR writes elsewhere")
    return configs


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only:
        return runs.plot_only(RESULTS_FILE, args, plot_figures, SCHEMA)
    import functools

    from common.data import load_for_run
    run, full, _ = runs.start(RESULTS_FILE, args, lambda _, data_id: run_settings(args, data_id),
                              SCHEMA, model=False, validation=False)
    held_out = functools.cache(lambda: load_for_run(args.data_dir, args.train_limit))
    configs = planned(run, args, held_out)
    for number, (name, config) in enumerate(configs.items(), start=1):
        entry = run.find().get("experiments", {}).get(name)
        if entry and entry["complete"] and not args.force:
            print(f"{name}: done ({entry['final_test_accuracy']:.4f}), skipped; --force reruns it")
            continue
        if entry and not args.force:
            print(f"{name}: resuming after epoch {len(entry['epochs'])}")
        else:
            if entry:
                run.back_up()
            shutil.rmtree(os.path.join(run.paths["checkpoints"], f"part1_{name}-{run.label}"),
                          ignore_errors=True)
            # this experiment's machine and versions (the run's may be older)
            fresh = {"config": config, "epochs": [], "complete": False,
                     "meta": run_metadata(full.source)}
            run.update(lambda stored, name=name, fresh=fresh:
                       stored.setdefault("experiments", {}).update({name: fresh}))
        splits = held_out() if "validation" in config else full
        print(f"{name} ({number}/{len(configs)}): step {config['step']}, {config['model']} CNN, "
              f"{config['optimizer']}, {config['epochs']} epochs, "
              f"{len(splits.train[0])} training images")
        entry = run_experiment(run, name, config, splits)
        print(f"{name}: final test accuracy {entry['final_test_accuracy']:.4f}")
    plot_figures(run.find(), run.paths["figures"])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
