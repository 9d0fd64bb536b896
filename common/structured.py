"""Structured pruning: whole channels removed, so that a smaller dense
network is left, faster on every runtime.

Which channels must go together comes from the model's channel dependency
graph (`common.channels`): in a chain of convs a group is one conv's output
filters (with the batch norm after it and the next conv's input channels);
through a residual Add it is every conv that writes to the sum, through a
Concatenate a slice, through a depthwise conv its input and output. Groups
are named after the first layer that makes their channels, which in a chain
is the conv itself, so every function here takes conv (group) names.

Criteria say which channels of a group go (the least important, summed over
every layer of the group, as DepGraph's group norm); allocation says how many
each group keeps: the same share everywhere, one ranking across groups, or
from each group's measured sensitivity weighed by its FLOPs.
"""

import weakref

import keras
import numpy as np
from keras import layers

from common import channels

_GRAPHS = weakref.WeakKeyDictionary()


def graph(model):
    """The channel dependency graph of `model` (built once per model object)."""
    if model not in _GRAPHS:
        _GRAPHS[model] = channels.build(model)
    return _GRAPHS[model]


def flattened(model):
    """`model` itself, or, where it holds nested models (a keras.applications
    backbone inside a classifier), a copy with every layer at one level: the
    same layers and weights, the same outputs (`channels.remove` keeping
    every channel), so that each layer can be named."""
    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model
    return channels.remove(channels.build(model), {})


def prunable_convs(model):
    """Names of the groups of conv channels that can be removed, in model
    order: in a chain CNN, the trainable channels-last convs (a frozen conv,
    such as the reference's whitening filters, is kept whole, as is anything
    feeding the output). Hidden Dense units are groups of the graph too, but
    not filters: the parts prune convs."""
    g = graph(model)
    return [name for name in g.groups
            if not isinstance(channels.node(g, name.split(":")[0]).layer, layers.Dense)]


def group_sizes(model, names=None):
    """dict group name -> channels in it."""
    groups = graph(model).groups
    return {name: groups[name].size for name in (groups if names is None else names)}


def channel_sources(model, names=None):
    """dict layer name -> (group name, repeats) for each layer that reads the
    channels of exactly one group in `names` (default all), `repeats` the
    times it reads each (H*W after a Flatten, else 1); used to follow a chain."""
    g = graph(model)
    names = set(g.groups if names is None else names)
    out = {}
    for name in names:
        for member, role in g.groups[name].members:
            if role == "in":
                out[member] = (name, channels.positions(g, member, name).shape[0])
    return out


def remove_filters(model, keep):
    """A new, smaller model with only the `keep` channels of each named group;
    `model` is not changed and shares nothing with it.

    Parameters
    ----------
    model : keras.Sequential or functional keras.Model
    keep : dict group (conv) name -> indices of the channels to keep

    Every layer of each group is sliced to match: the convs that make the
    channels lose those filters, the batch norms their parameters and
    statistics, the convs and Dense layers that read them those inputs.
    """
    return channels.remove(graph(model), keep)


# ---- FLOPs of a pruned model, without building it ----------------------------

def flops_after(model, counts):
    """FLOPs of one image's forward pass once each group in `counts` keeps that
    many channels (multiply-add = 2, as `measure.count_flops` counts them),
    computed from the shapes alone."""
    return channels.flops(graph(model), counts)


# ---- criteria: which filters of a layer matter least ---------------------------

def _numpy(variable):
    return np.abs(keras.ops.convert_to_numpy(variable))


def l1_norms(model, names):
    """dict group name -> (size,) L1 norm of each channel's filters, summed over
    every layer that makes the group's channels (Li et al. 2017; DepGraph's
    group norm for a group of several convs)."""
    g = graph(model)
    scores = {}
    for name in names:
        if name not in g.groups:   # a conv kept whole (at the output): its own filters
            scores[name] = _numpy(model.get_layer(name).kernel).reshape(
                -1, model.get_layer(name).filters).sum(axis=0)
            continue
        total = np.zeros(g.groups[name].size)
        for member, role in g.groups[name].members:
            if role != "out":
                continue
            layer = channels.node(g, member).layer
            kernel = _numpy(layer.pointwise_kernel if hasattr(layer, "pointwise_kernel")
                            else layer.kernel)
            if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose)):
                kernel = np.moveaxis(kernel, -2, -1)
            norms = kernel.reshape(-1, kernel.shape[-1]).sum(axis=0)
            total += norms[channels.positions(g, member, name)].sum(axis=(0, 2))
        scores[name] = total
    return scores


def bn_scales(model, names):
    """dict group name -> (size,) |gamma| of each channel summed over every
    batch norm with a learned scale that the group's channels pass (Network
    Slimming, Liu et al. 2017), or None for a group that passes none."""
    g = graph(model)
    scores = {}
    for name in names:
        total = None
        for member, role in g.groups[name].members:
            layer = channels.node(g, member).layer
            if role == "through" and isinstance(layer, layers.BatchNormalization) and \
                    layer.scale:
                where = channels.positions(g, member, name)
                found = _numpy(layer.gamma)[where].sum(axis=(0, 2))
                total = found if total is None else total + found
        scores[name] = total
    return scores


def activation_importance(model, names, images, batch_size=250):
    """dict group name -> (size,) how much each channel feeds the layers that
    read it: its mean |activation| where each Conv or Dense reads it (after
    the batch norm, pooling and activation between), times the L1 norm of
    the weights that read it, summed over every such reader, on `images`
    (training images).

    Unlike a filter's own L1 norm, this sees what a batch norm does to the
    channel: in the reference net every conv is followed by one, which undoes
    the filter's scale.
    """
    g = graph(model)
    readers = [(member, name) for name in names for member, role in g.groups[name].members
               if role == "in" and type(channels.node(g, member).layer) in
               (layers.Conv2D, layers.Dense, layers.Conv1D)]
    taps = channels.taps(g, [channels.node(g, member).inputs[0] for member, _ in readers])
    # mean |activation| per channel, summed a batch at a time (all of a
    # ResNet-56's taps of 2,000 images at once would take ~4 GB)
    sums = [0.0] * len(readers)
    counts = [0] * len(readers)
    for start in range(0, len(images), batch_size):
        values = taps.predict_on_batch(images[start:start + batch_size])
        for i, v in enumerate([values] if len(readers) == 1 else values):
            v = np.abs(np.asarray(v)).reshape(-1, v.shape[-1])
            sums[i] = sums[i] + v.sum(axis=0, dtype=np.float64)
            counts[i] += len(v)
    scores = {name: np.zeros(g.groups[name].size) for name in names}
    for (member, name), total, count in zip(readers, sums, counts):
        kernel = _numpy(channels.node(g, member).layer.kernel)
        mean = total / count                                                  # (channels,)
        reads = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=(0, 2))
        where = channels.positions(g, member, name)                           # (k, size, r)
        scores[name] = scores[name] + (mean[where] * reads[where]).sum(axis=(0, 2))
    return scores


def keep_indices(scores, counts):
    """dict conv name -> the indices of its `counts[name]` highest-scored filters, sorted."""
    return {name: np.sort(np.argsort(-np.asarray(scores[name]), kind="stable")[:count])
            for name, count in counts.items()}


# ---- allocation: how many filters each layer keeps ------------------------------

def _filters(model, names):
    return group_sizes(model, names)


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
