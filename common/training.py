"""Training with per-epoch records that survive interruptions."""

import time

import keras
import tensorflow as tf


def set_seed(seed):
    """Seed Python, numpy and the backend, and ask TensorFlow for deterministic ops,
    so that the same seed gives the same numbers on the same machine."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class EpochRecorder(keras.callbacks.Callback):
    """Turn each epoch's logs into a record and hand it to `on_record`.

    Put it before `BackupAndRestore` in the callback list: a kill between the
    two then leaves a record whose epoch is re-run (and its record replaced)
    on resume, never a backed-up epoch without a record.
    """

    def __init__(self, on_record):
        super().__init__()
        self.on_record = on_record

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.on_record({
            "epoch": epoch + 1,
            "train_accuracy": float(logs["accuracy"]),
            "train_loss": float(logs["loss"]),
            "test_accuracy": float(logs["val_accuracy"]),
            "test_loss": float(logs["val_loss"]),
            "seconds": round(time.perf_counter() - self._start, 2),
        })


def merge_epoch(epochs, record):
    """`epochs` with `record` appended, dropping records of that epoch or later
    (left by a run that was killed after recording but before its backup)."""
    return [e for e in epochs if e["epoch"] < record["epoch"]] + [record]


def fit_resumable(model, train, test, *, epochs, batch_size, backup_dir,
                  on_record, verbose=2):
    """Fit `model` (compiled, with an accuracy metric), evaluating on `test` after
    every epoch; resume from `backup_dir` if an earlier run left a backup there.

    Parameters
    ----------
    train, test : (x, y) tuples of arrays
    backup_dir : str
        Keras BackupAndRestore folder; deleted when training finishes.
    on_record : callable
        Called with each epoch's record dict (see EpochRecorder) as it ends.
    verbose : int
        Keras verbosity; 2 prints one line per epoch.
    """
    callbacks = [EpochRecorder(on_record),
                 keras.callbacks.BackupAndRestore(backup_dir)]
    model.fit(*train, validation_data=test, epochs=epochs, batch_size=batch_size,
              shuffle=True, callbacks=callbacks, verbose=verbose)
    return model
