"""Evaluation: accuracy (through Keras' own evaluate), test-time
augmentation, and batch-norm statistics re-estimated after surgery."""

import weakref

import keras
import numpy as np

from common import models


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

