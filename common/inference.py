"""Inference-only rewrites that keep a model's outputs: batch norm folded into
the conv before it.

At inference a batch norm is a fixed per-channel affine map, y = s * x + t with
s = gamma / sqrt(var + eps) and t = beta - s * mean. After a conv it folds into
the conv's kernel and bias (W' = W * s, b' = s * b + t), and the model runs one
pass over the feature map fewer per batch norm. With a 2x2 max pool between
conv and batch norm it still folds when every s > 0, because then
max(s * x) + t = s * max(x) + t: the pooled maximum is the same element.
"""

import keras
import numpy as np
from keras import layers

from common.models import replace_layers


def _producer(layer):
    """The layer whose output is `layer`'s only input, or None."""
    try:
        history = layer.input._keras_history
    except (AttributeError, ValueError):  # several inputs, or shared between calls
        return None
    return history.operation


def _single_use(layer):
    return len(layer._outbound_nodes) == 1


def _affine(norm):
    """(s, t) of a channels-last BatchNormalization in inference mode; shapes (C,)."""
    weights = {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w).astype(np.float64)
               for w in norm.weights}
    scale = weights.get("gamma", 1.0) / np.sqrt(weights["moving_variance"] + norm.epsilon)
    shift = weights.get("beta", 0.0) - scale * weights["moving_mean"]
    return scale, shift


def foldable_pairs(model):
    """dict batch-norm name -> name of the conv it folds into.

    A batch norm folds when it normalises the last axis of a linear Conv2D's
    output, directly or through a MaxPooling2D (then only if all its scales are
    positive), and nothing else reads the conv's (or the pool's) output.
    """
    pairs = {}
    for norm in model.layers:
        if type(norm) is not layers.BatchNormalization or norm.axis not in (-1, 3):
            continue
        source = _producer(norm)
        through_pool = type(source) is layers.MaxPooling2D
        if through_pool:
            if not _single_use(source) or np.any(_affine(norm)[0] <= 0):
                continue
            source = _producer(source)
        if (type(source) is layers.Conv2D and _single_use(source)
                and source.data_format == "channels_last"
                and source.activation is keras.activations.linear):
            pairs[norm.name] = source.name
    return pairs


def fold_batchnorm(model):
    """A new model computing what `model` computes in inference mode, with every
    foldable batch norm (see `foldable_pairs`) merged into its conv.

    Parameters
    ----------
    model : keras.Sequential or functional keras.Model

    Returns
    -------
    new_model : keras.Model (float32 weights; the original is not changed)
    pairs : dict batch-norm name -> conv name, the folds made
    """
    pairs = foldable_pairs(model)
    replacements = {norm: [] for norm in pairs}        # the batch norm goes into the conv
    for norm, conv in pairs.items():
        replacements[conv] = [_folded_conv(model.get_layer(conv), model.get_layer(norm))]
    return replace_layers(model, replacements), pairs


def _folded_conv(conv, norm):
    """A new, built Conv2D computing norm(conv(x)) (inference mode), with a bias."""
    folded = layers.Conv2D.from_config({**conv.get_config(), "use_bias": True})
    folded.build(conv.input.shape)
    scale, shift = _affine(norm)
    kernel = keras.ops.convert_to_numpy(conv.kernel) * scale           # (kh, kw, c, f) * (f,)
    bias = keras.ops.convert_to_numpy(conv.bias) if conv.use_bias else 0.0
    folded.set_weights([kernel.astype(np.float32), (scale * bias + shift).astype(np.float32)])
    return folded
