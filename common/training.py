"""Training with per-epoch records that survive interruptions."""

import json
import os
import shutil
import sys
import time
import weakref

import filelock
import keras
import numpy as np

from common import models
from common.precision import resolve as resolve_precision


def set_seed(seed):
    """Seed Python, numpy and the backend, and (on TensorFlow) ask for
    deterministic ops, so that the same seed gives the same numbers on the same
    machine. Other backends are seeded only."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()


def _float_or_none(value):
    return None if value is None else float(value)


class EpochRecorder(keras.callbacks.Callback):
    """Turn each epoch's logs into a record and hand it to `on_record`.

    `evaluated_on` names what fit's validation data is ("test" for Part 1's
    steps 4-7, which plot test curves as the study does; "validation" for the
    reference and every fine-tune): the record's keys are `<evaluated_on>_accuracy`
    and `<evaluated_on>_loss`, None on epochs that skipped the evaluation.

    Put it before `BackupAndRestore` in the callback list: a kill between the
    two then leaves a record whose epoch is re-run (and its record replaced)
    on resume, never a backed-up epoch without a record.
    """

    def __init__(self, on_record, evaluated_on="validation"):
        super().__init__()
        self.on_record, self.evaluated_on = on_record, evaluated_on

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.on_record({
            "epoch": epoch + 1,
            "train_accuracy": float(logs["accuracy"]),
            "train_loss": float(logs["loss"]),
            f"{self.evaluated_on}_accuracy": _float_or_none(logs.get("val_accuracy")),
            f"{self.evaluated_on}_loss": _float_or_none(logs.get("val_loss")),
            "seconds": round(time.perf_counter() - self._start, 2),
        })


class Progress(keras.callbacks.Callback):
    """Keras' `Progbar` for each epoch, fit's val_* metrics named after what
    they are measured on (`evaluated_on`): a bar with ETA in a terminal; in a
    log, one line per epoch that starts "epoch 3/15, ETA 21 min:". Used in
    place of fit's own printing (fit verbose=0)."""

    def __init__(self, evaluated_on="validation"):
        super().__init__()
        self.evaluated_on = evaluated_on
        self._seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        live = sys.stdout.isatty()
        if live:
            print(f"Epoch {epoch + 1}/{self.params['epochs']}")
        metrics = ("loss", "accuracy", *(f"{self.evaluated_on}_{m}" for m in ("loss", "accuracy")))
        self._bar = keras.utils.Progbar(self.params["steps"], verbose=1 if live else 2,
                                        stateful_metrics=metrics)
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._bar.verbose == 1:
            self._bar.update(batch + 1, list((logs or {}).items()))

    def on_epoch_end(self, epoch, logs=None):
        self._seconds.append(time.perf_counter() - self._start)
        if self._bar.verbose == 2:
            left = np.mean(self._seconds) * (self.params["epochs"] - epoch - 1)
            print(f"epoch {epoch + 1}/{self.params['epochs']}, ETA {left / 60:.0f} min: ",
                  end="")
        values = [(name.replace("val_", f"{self.evaluated_on}_"), value)
                  for name, value in (logs or {}).items()]
        self._bar.update(self.params["steps"], values, finalize=True)


class Lookahead(keras.callbacks.Callback):
    """Every `every` steps, pull the weights towards their running average and
    continue from there (airbench's lookahead; hlb-cifar10's EMA).

    From epoch `start_epoch` on, with t the fraction of training done, the
    average moves by (1 - rho) towards the weights, rho = decay**every * t**power:
    a short memory early, a strong average at the end. Batch-norm moving
    statistics are averaged too, so they match the averaged weights. After an
    epoch's last step the weights are set to the average, so the epoch's test
    evaluation sees the model that is saved, and a resumed run starts where an
    uninterrupted one would.
    """

    def __init__(self, total_steps, start_epoch=3, every=5, decay=0.95, power=3.0):
        super().__init__()
        self.total_steps, self.start_epoch = total_steps, start_epoch
        self.every, self.decay, self.power = every, decay, power
        self._average = None

    def _variables(self):
        # Float weights of the layers that train: augmentation layers hold
        # integer seed states, and frozen layers (whitening filters, a
        # distillation teacher) never change.
        return [v for layer in models.leaf_layers(self.model) if layer.trainable
                for v in layer.weights if "float" in str(v.dtype)]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._weights = self._variables() if epoch >= self.start_epoch else None
        # The average lives beside the weights, as backend tensors: no copy to
        # the host and back every few steps (that cost 23 s of a 67 s epoch).
        self._average = None if self._weights is None else \
            [keras.ops.copy(v.value) for v in self._weights]

    def on_train_batch_end(self, batch, logs=None):
        if self._average is None:
            return
        step = self._epoch * self.params["steps"] + batch + 1  # the optimizer's iterations
        if step % self.every == 0:
            rho = self.decay ** self.every * min(1.0, step / self.total_steps) ** self.power
            self._average = [average + (1 - rho) * (variable.value - average)
                             for average, variable in zip(self._average, self._weights)]
        if step % self.every == 0 or batch + 1 == self.params["steps"]:
            for average, variable in zip(self._average, self._weights):
                variable.assign(average)


def recalibrate_batchnorm(model, images, batch_size=500):
    """Re-estimate every batch norm's moving mean and variance of `model` (in
    place) as exact averages over `images`, weights unchanged.

    Pruning or decomposing the layer before a batch norm changes the statistics
    of its input; the stored ones then mis-normalise it. This costs one forward
    pass, no training. Returns the number of batch-norm layers updated.
    """
    norms = [layer for layer in models.leaf_layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [norm.momentum for norm in norms]
    try:
        for i, start in enumerate(range(0, len(images), batch_size), start=1):
            for norm in norms:  # moving = moving * (1 - 1/i) + batch / i: the running mean
                norm.momentum = 1 - 1 / i
            model(images[start:start + batch_size], training=True)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    return len(norms)


def merge_epoch(epochs, record):
    """`epochs` with `record` appended, dropping records of that epoch or later
    (left by a run that was killed after recording but before its backup)."""
    return [e for e in epochs if e["epoch"] < record["epoch"]] + [record]


def fit_resumable(model, train, evaluation, *, epochs, batch_size, backup_dir,
                  on_record, callbacks=(), evaluate_every=1, evaluated_on="validation",
                  verbose=1):
    """Fit `model` (compiled, with an accuracy metric), evaluating on
    `evaluation` after every `evaluate_every`-th epoch and the last; resume
    from `backup_dir` if an earlier run left a backup there.

    Parameters
    ----------
    train, evaluation : (x, y) tuples of arrays
    evaluated_on : what `evaluation` is, "validation" or "test" (the
        records' keys, see `EpochRecorder`)
    backup_dir : str
        Keras BackupAndRestore folder; deleted when training finishes.
    on_record : callable
        Called with each epoch's record dict (see EpochRecorder) as it ends.
    callbacks : more Keras callbacks, run before the backup is written.
    verbose : int
        0: silent; else a `Progress` bar (terminal) or line (log) per epoch.
    """
    # Two checkpoints (the last and the one before): a kill while one is
    # written leaves the other, which check_checkpoint falls back to.
    callbacks = [*callbacks, EpochRecorder(on_record, evaluated_on),
                 *([Progress(evaluated_on)] if verbose else []),
                 keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True)]
    eval_epochs = sorted({*range(evaluate_every, epochs + 1, evaluate_every), epochs})  # 1-based
    try:
        with filelock.FileLock(f"{backup_dir}.lock", timeout=0):
            check_checkpoint(backup_dir)
            model.fit(*train, validation_data=evaluation, validation_freq=eval_epochs,
                      epochs=epochs, batch_size=batch_size, shuffle=True,
                      callbacks=callbacks, verbose=0)
    except filelock.Timeout:
        raise ValueError(f"{backup_dir}: another run is training this now; wait for "
                         "it, or use another --output-dir") from None
    return model


# BackupAndRestore's files, and the copies of the previous epoch's beside them.
CHECKPOINT_FILES = ("latest.weights.h5", "training_metadata.json")


def _checkpoint_problem(weights, metadata):
    """Why the checkpoint pair cannot be used, or None if it can."""
    import h5py
    try:
        def read(_, item):  # every array: a torn write fails here (None: visit on)
            if isinstance(item, h5py.Dataset):
                item[()]
        with h5py.File(weights, "r") as f:
            f.visititems(read)
        with open(metadata) as f:
            if not isinstance(json.load(f).get("epoch"), int):
                return f"{metadata}: no epoch number"
    except (OSError, ValueError, AttributeError) as err:
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    return None


def check_checkpoint(backup_dir):
    """Make `backup_dir` hold a usable checkpoint, or none.

    When the last checkpoint is damaged (a kill while it was written), the one
    of the epoch before takes its place, and training resumes from there.
    Raises ValueError naming the folder when neither can be used.
    """
    latest = [os.path.join(backup_dir, name) for name in CHECKPOINT_FILES]
    previous = [f"{path}.bkp" for path in latest]
    if not any(os.path.exists(path) for path in latest):
        return
    problem = _checkpoint_problem(*latest)
    if problem is None:
        return
    if not any(os.path.exists(path) for path in previous):  # the first epoch's, torn
        print(f"{backup_dir}: the first checkpoint is damaged ({problem}); starting again "
              "from epoch 1")
        shutil.rmtree(backup_dir)
        return
    if all(os.path.exists(path) for path in previous) and _checkpoint_problem(*previous) is None:
        print(f"{backup_dir}: last checkpoint damaged ({problem}); resuming from the one "
              "before")
        for source, target in zip(previous, latest):
            shutil.copyfile(source, target)
        return
    raise ValueError(f"{backup_dir}: damaged checkpoint ({problem}); delete the folder "
                     "to start this run again from epoch 1")


def one_cycle(peak, total_steps, warmup_fraction=0.23, start=0.2, end=0.07):
    """Learning rate that rises linearly from `start`*peak to `peak` over the first
    `warmup_fraction` of the steps, then falls (cosine) to `end`*peak: the
    one-cycle shape of airbench's triangle, from Keras' own CosineDecay so that
    it is saved and restored with the optimizer."""
    warmup = max(1, round(warmup_fraction * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=start * peak, decay_steps=max(1, total_steps - warmup),
        alpha=end, warmup_target=peak, warmup_steps=warmup)


def predict_flip_tta(model, images, batch_size=1000):
    """Mean of the softmax outputs for the images and their mirror images
    (test-time augmentation; images (N, H, W, C) -> probabilities (N, classes))."""
    plain = model.predict(images, batch_size=batch_size, verbose=0)
    mirrored = model.predict(images[:, :, ::-1], batch_size=batch_size, verbose=0)
    return (plain + mirrored) / 2


def predict_flip_translate_tta(model, images, batch_size=1000):
    """airbench94's test-time augmentation (its `tta_level=2`), six views per
    image: the flip-TTA prediction of the images (weight 1/2) and of the images
    shifted by one pixel diagonally, each way, with reflected borders (1/4
    each). airbench averages logits; this averages the softmax outputs.
    images (N, H, W, C) -> probabilities (N, classes)."""
    h, w = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = (padded[:, :h, :w], padded[:, 2:, 2:])                # each (N, H, W, C)
    return (predict_flip_tta(model, images, batch_size) / 2
            + sum(predict_flip_tta(model, view, batch_size) for view in shifted) / 4)


def accuracy(probabilities, one_hot):
    """Fraction of rows whose arg-max matches the one-hot label."""
    return float(np.mean(np.argmax(probabilities, 1) == np.argmax(one_hot, 1)))


_EVALUATORS = weakref.WeakKeyDictionary()  # model -> a compiled model sharing its layers


def accuracy_on(model, data, batch_size=1000):
    """Accuracy of `model` on `data` = (images, one-hot labels), no augmentation:
    Keras' own evaluation, through a model that shares `model`'s layers and is
    compiled for it (once per model; `model` itself stays uncompiled, so that
    no optimizer state is saved with it)."""
    if model not in _EVALUATORS:
        evaluator = keras.Model(model.inputs, model.outputs)
        evaluator.compile(loss="categorical_crossentropy", metrics=["categorical_accuracy"])
        _EVALUATORS[model] = evaluator
    scores = _EVALUATORS[model].evaluate(*data, batch_size=batch_size, verbose=0,
                                         return_dict=True)
    return round(float(scores["categorical_accuracy"]), 6)


def soften(probabilities, temperature):
    """softmax(logits / T) from softmax(logits) (N, classes): log-probabilities
    are the logits up to a per-row constant, which the softmax cancels."""
    if temperature == 1:
        return probabilities
    log_probabilities = keras.ops.log(keras.ops.clip(probabilities, 1e-7, 1.0))
    return keras.ops.softmax(log_probabilities / temperature, axis=-1)


class Distillation(keras.Model):
    """Trains `student` on its labels and on a frozen `teacher`'s probabilities
    for the same augmented images (Hinton et al. 2015):

        loss = (1 - weight) * CE(labels, student)
               + weight * T**2 * CE(soften(teacher, T), soften(student, T))

    CE(teacher, student) is KL(teacher || student) plus a constant; T**2 keeps
    its gradients the same size at any temperature T. The labels' term is the
    compiled loss (scaled by 1 - weight there); this model adds the teacher's
    term while training. Called for inference it is the student.
    """

    def __init__(self, augment, student, teacher, weight, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        self.augment, self.student, self.teacher = augment, student, teacher
        self.teacher.trainable = False
        self.weight, self.temperature = weight, temperature

    def call(self, images, training=False):
        images = self.augment(images, training=training)
        probabilities = self.student(images, training=training)
        if training:
            targets = keras.ops.stop_gradient(self.teacher(images, training=False))
            self.add_loss(self.weight * self.temperature ** 2 * keras.ops.mean(
                keras.losses.categorical_crossentropy(soften(targets, self.temperature),
                                                      soften(probabilities, self.temperature))))
        return probabilities


# The fine-tuning recipe of every compressed model (Parts 2, 3 and 5): the
# reference's recipe at a lower peak learning rate (the weights start near a
# good solution), the reference as teacher. Checked on the validation split
# against one change at a time (results/probes.json "fine_tune_recipe",
# docs/reference.md): at 90% of the weights pruned, one seed (n = 1), it was
# ahead of peak 0.05, no teacher and pruning in one shot (88.84% against
# 88.24, 88.44 and 88.64%); Tucker-2's two recipes, over 3 seeds, differ by
# less than their spread of ~0.5 points, so gaps this size are not settled.
FINE_TUNE = {
    "epochs": 3,
    "batch_size": 512,
    "peak_learning_rate": 0.15,     # a fifth of the reference's 0.75
    # Share of the loss that pulls the student's probabilities towards the
    # reference's: a teacher's probabilities say more per image than a label.
    "distillation_weight": 0.9,
}
# Tucker-2's models start closer to the reference: at a lower peak without a
# teacher they are level with FINE_TUNE (k = 4, 3 seeds: mean 89.28% against
# 89.17%, spreads 0.54 and 0.24 points; docs/reference.md) in 0.55 of the
# time (no teacher forward pass), which is why it is kept.
FOR_TUCKER = {"peak_learning_rate": 0.05, "distillation_weight": 0.0}


def fine_tune_recipe(epochs=None, batch_size=None, precision="auto", **changes):
    """`FINE_TUNE` with `changes` (e.g. `FOR_TUCKER`), the CLI's overrides and
    the precision it resolves to here: the fine-tuning part of a run's settings."""
    return {**FINE_TUNE, **changes, "epochs": FINE_TUNE["epochs"] if epochs is None else epochs,
            "batch_size": batch_size or FINE_TUNE["batch_size"],
            "precision": resolve_precision(precision)}


def fine_tune(model, train, validation, *, epochs, batch_size=512, peak_learning_rate=0.05,
              label_smoothing=0.2, max_shift=2 / 32, precision="auto",
              lookahead_start_epoch=1, teacher=None, distillation_weight=0.5,
              distillation_temperature=1.0, seed=0, callbacks=(), backup_dir=None, verbose=1):
    """Briefly retrain a compressed model, with the reference model's recipe at a
    lower learning rate (the weights start close to a good solution), its
    lookahead averaging from epoch `lookahead_start_epoch` on.

    Trains a copy computing in `precision` (a Keras policy, or "auto": see
    `common.precision.resolve`) through flip/translate augmentation, then
    copies the weights back into `model` (whose own policy is unchanged).
    With a `teacher` (e.g. the uncompressed model), a `distillation_weight`
    share of the loss pulls the model's probabilities towards the teacher's at
    `distillation_temperature` (see `Distillation`; the recorded losses are
    then the labels' share, (1 - weight) * cross-entropy). `callbacks` go to
    fit before the lookahead (e.g. `pruning.KeepPruned`, which finds the copy's
    layers by name: the average then only ever sees pruned weights at zero).
    With a `backup_dir`, a kill loses at most the epoch it fell in: the
    weights, optimizer and records are kept there after every epoch (as
    `fit_resumable` does) and the same call resumes; the folder is deleted
    at the end. Returns the per-epoch records.
    """
    if teacher is not None and not 0 <= distillation_weight <= 1:
        raise ValueError(f"distillation_weight must be in [0, 1], got {distillation_weight}")
    if distillation_weight == 0:
        teacher = None  # nothing to learn from it
    keras.utils.set_random_seed(seed)
    precision = resolve_precision(precision)
    fast = models.with_precision(model, precision)
    augment = models.augmentation(max_shift, seed=seed, dtype="float32")
    labels_loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if teacher is None:
        trainer = keras.Sequential([keras.Input(model.input_shape[1:]), augment, fast])
        loss = labels_loss
    else:
        # Renamed, so that callbacks finding the student's layers by name
        # (KeepPruned) never meet the teacher's.
        frozen = models.with_precision(teacher, precision, name_prefix="teacher_")
        trainer = Distillation(augment, fast, frozen, distillation_weight,
                               distillation_temperature)

        def loss(labels, probabilities):
            return (1 - distillation_weight) * labels_loss(labels, probabilities)
    steps = epochs * -(-len(train[0]) // batch_size)
    trainer.compile(
        optimizer=keras.optimizers.SGD(one_cycle(peak_learning_rate, steps), momentum=0.85,
                                       nesterov=True),
        loss=loss, metrics=["accuracy"])
    records = []
    fit_callbacks = [*callbacks, Lookahead(steps, start_epoch=lookahead_start_epoch)]
    if backup_dir is None:
        trainer.fit(*train, validation_data=validation, epochs=epochs, batch_size=batch_size,
                    callbacks=[EpochRecorder(records.append),
                               *([Progress()] if verbose else []), *fit_callbacks], verbose=0)
    else:
        saved = os.path.join(backup_dir, "records.json")
        if os.path.exists(saved):
            with open(saved) as f:
                records = json.load(f)

        trainer(train[0][:1])  # built: BackupAndRestore restores into its weights

        def keep(record):
            records[:] = merge_epoch(records, record)
            os.makedirs(backup_dir, exist_ok=True)
            write_records(saved, records)
        fit_resumable(trainer, train, validation, epochs=epochs, batch_size=batch_size,
                      backup_dir=backup_dir, on_record=keep, callbacks=fit_callbacks,
                      verbose=verbose)
        shutil.rmtree(backup_dir, ignore_errors=True)
    model.set_weights(fast.get_weights())
    return records


def write_records(path, records):
    """Per-epoch records as JSON, atomically (a kill leaves the old or the new file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(records, f)
    os.replace(tmp, path)
