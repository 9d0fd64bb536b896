"""Training with per-epoch records that survive interruptions."""

import json
import os
import shutil
import sys
import time

import filelock
import keras
import numpy as np

from common import cli, models


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
    log, one line per epoch that starts "epoch 3/15, ETA 21 min:" (and every
    cli.HEARTBEAT seconds a line with the step). Used in
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
        self._start = self._spoke = time.perf_counter()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._bar.verbose == 1:
            self._bar.update(batch + 1, list((logs or {}).items()))
        elif time.perf_counter() - self._spoke >= cli.HEARTBEAT:   # a log: a line now and then
            self._spoke = time.perf_counter()
            seconds = self._spoke - self._start
            print(f"epoch {self._epoch + 1}/{self.params['epochs']}: step {batch + 1}/"
                  f"{self.params['steps']}, {seconds:.0f} s, ETA "
                  f"{seconds / (batch + 1) * (self.params['steps'] - batch - 1):.0f} s",
                  flush=True)

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


def write_records(path, records):
    """Per-epoch records as JSON, atomically (a kill leaves the old or the new file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(records, f)
    os.replace(tmp, path)
