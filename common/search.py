"""Per-layer compression choices searched against measured latency (pure functions).

A choice for one conv is a pair (keep, rank): the share of its output filters
kept (the others removed, `common.structured`) and, if not None, the share of
its remaining channels that Tucker-2 keeps as ranks (`common.tucker`; the
conv's remaining c -> f becomes c -> ceil(c * rank) -> ceil(f * rank) -> f).
A configuration is one choice per conv, in model order. As in NetAdapt (Yang
et al. 2018), latency is not modelled but looked up: each conv's block (the
conv, or its three Tucker convs, and the channel-wise layers after it: pool,
activation) is timed alone in the runtime for every input width it can see,
and a model's latency predicted as the sum of its blocks'. Accuracy is
predicted the same way from each choice's measured loss alone. The most
accurate configuration under a latency budget is then a shortest path along
the chain of convs (`best_configurations`), which the caller verifies by
building it (`build`) and measuring it.
"""

import math

import keras
import numpy as np
from keras import layers

from common import structured, tucker

IDENTITY = (1.0, None)  # keep every filter, no decomposition


def kept(filters, keep):
    """Filters a conv of `filters` keeps at share `keep` (at least 1)."""
    return max(1, round(keep * filters))


def ranks(c, f, rank):
    """Tucker-2 ranks of a c -> f conv at share `rank`, or None for no decomposition."""
    return None if rank is None else (math.ceil(c * rank), math.ceil(f * rank))


def widths(model, convs, configuration):
    """Per conv of the chain: (input channels, output channels, Tucker ranks)
    under `configuration` (one (keep, rank) per conv, in order)."""
    out, c = [], model.get_layer(convs[0]).kernel.shape[2]
    for name, (keep, rank) in zip(convs, configuration):
        f = kept(model.get_layer(name).filters, keep)
        out.append((c, f, ranks(c, f, rank)))
        c = f
    return out


def chain(model):
    """The prunable convs of `model` in order, checked to form a chain (each
    one's input channels are the previous one's output channels)."""
    convs = structured.prunable_convs(model)
    if not convs:
        raise ValueError("no conv whose filters can be removed: the search needs a chain "
                         "of convs")
    sources = structured.channel_sources(model, convs)
    for previous, name in zip(convs, convs[1:]):
        if (sources.get(name) or (None,))[0] != previous:
            raise ValueError(f"layer {name!r} does not read the channels of {previous!r}: "
                             "the search needs a chain of convs")
    return convs


def build(model, configuration, scores):
    """The model under `configuration`: in each conv the filters of highest
    `scores` kept (dict conv -> (f,)), then each conv whose rank is set
    Tucker-decomposed at its remaining widths; `model` is not changed."""
    convs = chain(model)
    keep = {name: kept(model.get_layer(name).filters, k)
            for name, (k, _) in zip(convs, configuration) if k < 1}
    smaller = structured.remove_filters(model, structured.keep_indices(scores, keep)) \
        if keep else keras.models.clone_model(model)
    if not keep:
        smaller.set_weights(model.get_weights())
    for name, (_, rank) in zip(convs, configuration):
        if rank is not None:
            smaller, _ = tucker.decompose_model(
                smaller, lambda c, f, rank=rank: ranks(c, f, rank), layer_names=[name])
    return smaller


def _segment(model, conv):
    """The layers from `conv` up to the next conv, global pooling or dense layer
    (what runs on its output channels alone)."""
    names = [layer.name for layer in model.layers]
    out = [model.get_layer(conv)]
    for layer in model.layers[names.index(conv) + 1:]:
        if type(layer) in (layers.Conv2D, layers.Dense, layers.GlobalMaxPooling2D,
                           layers.GlobalAveragePooling2D, layers.Flatten):
            break
        out.append(layer)
    return out


def block(model, conv, c, f, rank_pair, seed=0):
    """A model of one conv's block at input width `c` and output width `f`,
    decomposed at `rank_pair` (R1, R2) if given: the conv (or its three Tucker
    convs, biases as after batch-norm folding) and the channel-wise layers
    after it, random weights (a forward time does not depend on them)."""
    keras.utils.set_random_seed(seed)
    source, *rest = _segment(model, conv)
    height, width = source.input.shape[1:3]
    inputs = keras.Input((height, width, c))
    config = {**source.get_config(), "filters": f, "name": "block"}
    if rank_pair is None:
        x = layers.Conv2D.from_config({**config, "use_bias": True})(inputs)
    else:
        r1, r2 = rank_pair
        x = layers.Conv2D(r1, 1, use_bias=False)(inputs)
        x = layers.Conv2D.from_config({**config, "filters": r2, "use_bias": False,
                                       "activation": "linear", "name": "core"})(x)
        x = layers.Conv2D(f, 1, use_bias=True, activation=config["activation"])(x)
    for layer in rest:
        x = layer.__class__.from_config({**layer.get_config(), "name": None})(x) \
            if type(layer) is not layers.BatchNormalization else x  # folded into the conv
    return keras.Model(inputs, x)


def configurations_key(configuration):
    """A configuration as text: "1/none 0.75/0.5 ..." (keep/rank per conv)."""
    return " ".join(f"{k:g}/{'none' if r is None else f'{r:g}'}" for k, r in configuration)


def best_configurations(latency, drop, options, n_convs, resolution):
    """Every configuration worth considering, by a dynamic programme along the
    chain of convs: for each total predicted latency (in steps of
    `resolution` seconds) and last width, the one of least predicted
    accuracy loss.

    Parameters
    ----------
    latency : callable (conv index, input keep or None for the first, choice) -> seconds
    drop : callable (conv index, choice) -> predicted accuracy loss of that choice alone
    options : list of choices (keep, rank), the same for every conv
    n_convs : length of the chain
    resolution : seconds per latency step

    Returns
    -------
    list of (predicted seconds, predicted loss, configuration), fastest first
    """
    states = {(None, 0): (0.0, 0.0, ())}  # (last keep, latency steps) -> (seconds, loss, config)
    for index in range(n_convs):
        following = {}
        for (previous, _), (seconds, loss, config) in states.items():
            for choice in options:
                total = seconds + latency(index, previous, choice)
                key = (choice[0], round(total / resolution))
                candidate = (total, loss + drop(index, choice), config + (choice,))
                if key not in following or candidate[1] < following[key][1]:
                    following[key] = candidate
        states = following
    ranked = sorted(states.values(), key=lambda s: (s[0], s[1]))
    front, best = [], math.inf  # keep only those that lose less than every faster one
    for seconds, loss, config in ranked:
        if loss < best - 1e-12:
            front.append((seconds, loss, config))
            best = loss
    return front


def fit_line(x, y):
    """Least-squares y = a * x + b, and R^2: how well a sum of blocks' latencies
    predicts a whole model's."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    a, b = np.polyfit(x, y, 1)
    residual = y - (a * x + b)
    total = np.sum((y - y.mean()) ** 2)
    return float(a), float(b), float(1 - np.sum(residual ** 2) / total) if total else 1.0
