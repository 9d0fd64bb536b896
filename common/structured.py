"""Structured pruning: whole output filters of Conv2D layers removed, so that a
smaller dense network is left, faster on every runtime.

Removing filter j of a conv removes channel j of its output. The layers that
act on each channel alone (pooling, batch norm, activations) pass the set of
kept channels on; the next conv loses those input channels, and a Dense layer
after global pooling (or Flatten) those input rows. A layer that mixes
channels in any other way (Add, Concatenate, a depthwise conv, an unknown
layer) cannot be followed, and is refused with its name.

Criteria say which filters of a layer go (the least important); allocation
says how many each layer keeps: the same share everywhere, one ranking across
layers, or from each layer's measured sensitivity weighed by its FLOPs.
"""

import keras
import numpy as np
from keras import layers

from common.models import ScaledShift

# Layers that compute each channel from that channel alone: kept channels pass.
CHANNELWISE = (layers.MaxPooling2D, layers.AveragePooling2D, layers.BatchNormalization,
               layers.Activation, layers.ReLU, layers.Dropout, ScaledShift,
               layers.GlobalMaxPooling2D, layers.GlobalAveragePooling2D)


def prunable_convs(model):
    """Names of the convs whose filters can be removed: channels-last, ungrouped,
    trainable Conv2D layers (a frozen conv, such as the reference's whitening
    filters, is kept whole), in model order."""
    return [layer.name for layer in model.layers
            if type(layer) is layers.Conv2D and layer.groups == 1 and layer.trainable
            and layer.data_format == "channels_last"]


def _inputs_of(layer):
    """The layers whose outputs `layer` reads."""
    tensors = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    return [t._keras_history.operation for t in tensors]


def channel_sources(model, names=None):
    """Which pruned conv's channels reach each layer.

    Returns dict layer name -> (conv name, spatial) for the layers whose input
    channels are the output channels of a conv in `names` (default: every
    prunable conv), where `spatial` is H*W for a Flatten in between (its rows
    are then (h, w, channel) triples) and 1 otherwise; None for the others.
    Raises ValueError naming a layer that mixes such channels in a way that
    cannot be followed.
    """
    names = set(prunable_convs(model) if names is None else names)
    reaching = {}   # layer name -> (conv, spatial) carried by its output, or None
    sources = {}
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        incoming = [reaching.get(source.name) for source in _inputs_of(layer)]
        carried = next((c for c in incoming if c is not None), None)
        if carried is not None and len(incoming) > 1:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) joins several "
                             "inputs; removing filters before it is not supported")
        sources[layer.name] = carried
        if type(layer) in (layers.Conv2D, layers.Dense):
            if carried is not None and type(layer) is layers.Conv2D and layer.groups != 1:
                raise ValueError(f"layer {layer.name!r} is a grouped conv; removing filters "
                                 "before it is not supported")
            reaching[layer.name] = (layer.name, 1) if layer.name in names else None
        elif carried is None:
            reaching[layer.name] = None
        elif isinstance(layer, CHANNELWISE):
            reaching[layer.name] = carried
        elif type(layer) is layers.Flatten:
            height, width = layer.input.shape[1:3]
            reaching[layer.name] = (carried[0], carried[1] * height * width)
        else:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) reads the "
                             f"channels of {carried[0]!r} in a way this surgery cannot follow")
    return sources


def _check_keep(model, keep):
    """keep: dict conv name -> indices; ValueError for anything off."""
    prunable = prunable_convs(model)
    by_name = {layer.name: layer for layer in model.layers}
    checked = {}
    for name, indices in keep.items():
        if name not in by_name:
            raise ValueError(f"no layer named {name!r}; prunable convs: {', '.join(prunable)}")
        if name not in prunable:
            raise ValueError(f"layer {name!r} ({type(by_name[name]).__name__}) is not a "
                             f"prunable conv; choose from {', '.join(prunable)}")
        filters = by_name[name].filters
        indices = np.unique(np.asarray(indices, dtype=int))
        if len(indices) != len(keep[name]) or not 1 <= len(indices) <= filters \
                or indices.min() < 0 or indices.max() >= filters:
            raise ValueError(f"layer {name!r}: keep 1..{filters} distinct filter indices in "
                             f"0..{filters - 1}, got {len(keep[name])}")
        checked[name] = indices
    return checked


def _rows(indices, spatial, channels):
    """Input rows of a Dense after Flatten that read `indices` of `channels`
    channels over `spatial` positions (channels-last flattening)."""
    return (np.arange(spatial)[:, None] * channels + indices[None, :]).ravel()


def remove_filters(model, keep):
    """A new, smaller model with only the `keep` filters of each named conv;
    `model` is not changed and shares nothing with it.

    Parameters
    ----------
    model : keras.Sequential or functional keras.Model
    keep : dict conv name -> indices of the output filters to keep

    Every layer downstream is sliced to match: the conv's kernel (kh, kw, c, f)
    and bias lose filters, the batch norms after it their parameters and
    statistics, the next conv its input channels (kh, kw, c, f) -> (kh, kw, c', f),
    a Dense layer after global pooling or Flatten its input rows.
    """
    keep = _check_keep(model, keep)
    sources = channel_sources(model, keep)

    def copy(layer):
        config = layer.get_config()
        if layer.name in keep:
            config["filters"] = len(keep[layer.name])
        return layer.__class__.from_config(config)
    new_model = keras.models.clone_model(model, clone_function=copy)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        source = sources.get(layer.name)
        if source is not None:
            conv, spatial = source
            indices = keep[conv]
            if type(layer) is layers.Conv2D:
                weights[0] = weights[0][:, :, indices]
            elif type(layer) is layers.Dense:
                weights[0] = weights[0][_rows(indices, spatial, model.get_layer(conv).filters)]
            else:  # batch norm, ScaledShift: one value per channel in every weight
                weights = [w[indices] for w in weights]
        if layer.name in keep:
            weights = [weights[0][..., keep[layer.name]]] + \
                      [w[keep[layer.name]] for w in weights[1:]]
        new_model.get_layer(layer.name).set_weights(weights)
    return new_model


# ---- FLOPs of a pruned model, without building it ----------------------------

def flops_after(model, counts):
    """FLOPs of one image's forward pass once each conv in `counts` keeps that
    many filters (multiply-add = 2; Conv2D and Dense layers, as
    `measure.count_flops` counts them), computed from the shapes alone."""
    sources = channel_sources(model, counts)
    macs = 0
    for layer in model.layers:
        if type(layer) is layers.Conv2D:
            _, out_h, out_w, _ = layer.output.shape
            kh, kw, c, f = layer.kernel.shape
            pair = out_h * out_w * kh * kw
        elif type(layer) is layers.Dense:
            c, f = layer.kernel.shape
            pair = 1
        else:
            continue
        source = sources.get(layer.name)
        if source is not None:
            c = counts[source[0]] * source[1]
        macs += pair * c * counts.get(layer.name, f)
    return int(2 * macs)


# ---- criteria: which filters of a layer matter least ---------------------------

def l1_norms(model, names):
    """dict conv name -> (f,) L1 norm of each filter (Li et al. 2017)."""
    return {name: np.abs(keras.ops.convert_to_numpy(model.get_layer(name).kernel)).sum(
        axis=(0, 1, 2)) for name in names}


def activation_importance(model, names, images, batch_size=250):
    """dict conv name -> (f,) how much each filter's channel feeds the next layer:
    its mean |activation| where the next Conv2D or Dense reads it (after the
    batch norm, pooling and activation between), times the L1 norm of the
    weights that read it, on `images` (training images).

    Unlike a filter's own L1 norm, this sees what a batch norm does to the
    channel: in the reference net every conv is followed by one, which undoes
    the filter's scale.
    """
    sources = channel_sources(model, names)
    readers = [model.get_layer(name) for name, source in sources.items()
               if source is not None and type(model.get_layer(name)) in (layers.Conv2D,
                                                                          layers.Dense)]
    taps = keras.Model(model.inputs, [reader.input for reader in readers])
    activations = taps.predict(images, batch_size=batch_size, verbose=0)
    if len(readers) == 1:
        activations = [activations]
    scores = {name: 0.0 for name in names}
    for reader, values in zip(readers, activations):
        conv, spatial = sources[reader.name]
        channels = model.get_layer(conv).filters
        weights = np.abs(keras.ops.convert_to_numpy(reader.kernel))
        if type(reader) is layers.Conv2D:
            mean = np.abs(values).mean(axis=(0, 1, 2))               # (c,)
            reads = weights.sum(axis=(0, 1, 3))                      # (c,)
        else:  # Dense: rows are (position, channel) pairs after Flatten
            mean = np.abs(values).reshape(len(values), spatial, channels).mean(axis=(0, 1))
            reads = weights.reshape(spatial, channels, -1).sum(axis=(0, 2))
        scores[conv] = scores[conv] + mean * reads
    return scores


def keep_indices(scores, counts):
    """dict conv name -> the indices of its `counts[name]` highest-scored filters, sorted."""
    return {name: np.sort(np.argsort(-np.asarray(scores[name]), kind="stable")[:count])
            for name, count in counts.items()}


# ---- allocation: how many filters each layer keeps ------------------------------

def _filters(model, names):
    return {name: model.get_layer(name).filters for name in names}


def uniform_counts(model, names, flops_fraction):
    """The same share of filters kept in every layer, the largest share whose
    model takes at most `flops_fraction` of the FLOPs."""
    filters = _filters(model, names)
    budget = flops_fraction * flops_after(model, filters)
    for share in np.linspace(1, 0, 1025)[1:]:
        counts = {n: max(1, int(round(share * f))) for n, f in filters.items()}
        if flops_after(model, counts) <= budget:
            return counts
    raise ValueError(f"no share of filters reaches {flops_fraction:.0%} of the FLOPs")


def global_counts(model, scores, flops_fraction, min_share=1 / 16):
    """One ranking across layers: filters go lowest-score first, each score
    divided by its layer's mean (scores of different layers have different
    scales), until the model takes at most `flops_fraction` of the FLOPs.
    Every layer keeps at least `min_share` of its filters."""
    filters = _filters(model, scores)
    budget = flops_fraction * flops_after(model, filters)
    ranked = sorted((score / np.mean(layer_scores), name)
                    for name, layer_scores in scores.items() for score in layer_scores)
    counts = dict(filters)
    for _, name in ranked:
        if flops_after(model, counts) <= budget:
            return counts
        if counts[name] - 1 >= max(1, min_share * filters[name]):
            counts[name] -= 1
    if flops_after(model, counts) <= budget:
        return counts
    raise ValueError(f"{flops_fraction:.0%} of the FLOPs is out of reach with every layer "
                     f"keeping {min_share:.0%} of its filters")


def sensitivity_counts(model, sensitivity, flops_fraction, step=1 / 32):
    """Per-layer shares from a measured sensitivity: starting from every filter,
    repeatedly shrink by `step` of its filters the layer whose accuracy lost
    per FLOP saved is smallest, until at most `flops_fraction` of the FLOPs
    remain. A layer that costs little accuracy and holds many FLOPs gives most.

    sensitivity : dict conv name -> {"share": [kept shares], "accuracy": [...]},
        the model's accuracy with only that layer pruned to each share (the
        full share 1.0 included); interpolated linearly in between.
    """
    filters = _filters(model, sensitivity)
    budget = flops_fraction * flops_after(model, filters)

    def accuracy(name, count):
        curve = sensitivity[name]
        order = np.argsort(curve["share"])
        return np.interp(count / filters[name], np.asarray(curve["share"])[order],
                         np.asarray(curve["accuracy"])[order])
    counts = dict(filters)
    flops = flops_after(model, counts)
    while flops > budget:
        best = None
        for name in counts:
            smaller = counts[name] - max(1, int(round(step * filters[name])))
            if smaller < max(1, min(sensitivity[name]["share"]) * filters[name]):
                continue  # not below the sweep's smallest share: no measurement there
            saved = flops - flops_after(model, {**counts, name: smaller})
            lost = accuracy(name, counts[name]) - accuracy(name, smaller)
            option = (max(lost, 0.0) / saved, -saved, name, smaller)  # ties: saves more
            best = option if best is None or option < best else best
        if best is None:
            raise ValueError(f"{flops_fraction:.0%} of the FLOPs is out of reach within "
                             "the shares the sensitivity sweep measured")
        counts[best[2]] = best[3]
        flops = flops_after(model, counts)
    return counts
