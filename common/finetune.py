"""Fine-tuning a compressed model: the shared recipe, distillation from the
reference, resumable (common.training.fit_resumable)."""

import json
import os
import shutil

import keras

from common import models
from common.precision import resolve as resolve_precision
from common.training import EpochRecorder, Lookahead, Progress, fit_resumable, merge_epoch, \
    one_cycle, write_records


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


# A fine-tune too short for the batch norms' moving statistics to forget
# their value before it (Keras' default momentum 0.99 keeps 82% of it after
# 20 steps: a ResNet-56 screened for one pass over 10,000 images fell from
# 83.3% to 49.6% on 1,000 validation images, and re-estimating gave back
# 83.3%) ends with them re-estimated on this many training images. At the
# reference's momentum 0.6 no fine-tune is that short.
STALE_STATISTICS = 0.01          # the share of the old statistics left that is too much
REESTIMATION_IMAGES = 2_000


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
    at the end. Batch norms whose moving statistics still hold more than
    `STALE_STATISTICS` of their value before the fine-tune (momentum ** steps)
    are re-estimated on the training images at the end. Returns the per-epoch
    records.
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
    momenta = [layer.momentum for layer in models.leaf_layers(model)
               if isinstance(layer, keras.layers.BatchNormalization)]
    if momenta and max(momenta) ** steps > STALE_STATISTICS:
        from common.evaluation import recalibrate_batchnorm
        recalibrate_batchnorm(model, train[0][:REESTIMATION_IMAGES])
    return records

