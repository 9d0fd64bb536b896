"""Per-conv compression choices searched against measured latency, on any graph
of convs (pure functions).

A choice at one conv is a pair (keep, rank): the share of its group's
channels kept (`common.structured`: every conv that makes the group's channels
loses the same ones, e.g. all the convs that write to one residual sum) and,
if not None, the share of its remaining channels that Tucker-2 keeps as ranks
(`common.tucker`: its c -> f becomes c -> ceil(c * rank) -> ceil(f * rank) ->
f). A group's share is chosen at the first searched conv that makes it; the
later ones that make it follow, choosing only their rank. A configuration is
one choice per searched conv, in call order (`Space.convs`).

As in NetAdapt (Yang et al. 2018), latency is not modelled but looked up:
each conv's block (the conv, or its three Tucker convs, and the channel-wise
layers that follow it alone: batch norm, activation, pooling) is timed alone
in the runtime at every width it can see, and a model's latency predicted as
the sum of its blocks' (through a line fitted to whole models). Accuracy is
predicted the same way, from each choice's measured loss alone
(`choice_loss`).

The search (`best_configurations`) is a dynamic programme over the convs in
call order whose state is the latency so far (in steps of a resolution) and
the shares of the groups still open: chosen at an earlier conv and read or
made by a later one. In a chain of convs that is one group (the previous
conv's), and the programme is the chain's shortest path; in a ResNet it is
the stage's residual group and the block's inner group. It is exact for the
additive model up to the resolution, unlike greedy steps (NetAdapt) or a
knapsack that fixes the neighbours' widths (HALP); its state grows with the
groups open at once, which `MAX_STATES` bounds (a DenseNet's concatenations
keep many open).
"""

import json
import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from common import channels, structured, tucker

IDENTITY = (1.0, None)  # keep every channel, no decomposition
# States the dynamic programme may hold after one conv: ~2 s of Python per
# million (state, choice) pairs; a graph that needs more is refused.
MAX_STATES = 200_000
# Layers timed with the conv before them when it is their only input.
FOLLOWERS = tuple(layer for layer in channels.CHANNELWISE if layer not in (
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalAveragePooling1D,
    layers.GlobalAveragePooling2D))


def kept(filters, keep):
    """Channels a group of `filters` keeps at share `keep` (at least 1)."""
    return max(1, round(keep * filters))


def ranks(c, f, rank):
    """Tucker-2 ranks of a c -> f conv at share `rank`, or None for no decomposition."""
    return None if rank is None else (math.ceil(c * rank), math.ceil(f * rank))


@dataclass(frozen=True)
class Conv:
    """One searched conv.

    name : its layer
    reads : ((group or None, channels, repeat), ...): its input channels, a
        group's or (None) kept whole
    makes : the group its output channels are
    chooses : whether the group's share is chosen here (its first searched maker)
    rank_shares : the Tucker-2 ranks it may take, None (not decomposed) first
    """
    name: str
    reads: tuple
    makes: str
    chooses: bool
    rank_shares: tuple


@dataclass(frozen=True)
class Space:
    """The searched convs of a model (call order), the channels of each group
    they make, and the shares a group may keep."""
    convs: tuple
    sizes: dict
    keeps: tuple

    def choices(self, index, shares):
        """The choices at conv `index`, given the shares of the groups chosen
        before it (dict group -> share)."""
        conv = self.convs[index]
        if conv.chooses:
            return [(k, r) for k in self.keeps for r in conv.rank_shares]
        return [(shares[conv.makes], r) for r in conv.rank_shares]

    def widths(self, index, shares, rank):
        """(input channels, output channels, Tucker ranks or None) of conv
        `index` under the groups' `shares` and its `rank` share."""
        conv = self.convs[index]
        c = sum((n if g is None else kept(n, shares[g])) * repeat for g, n, repeat in conv.reads)
        f = kept(self.sizes[conv.makes], shares[conv.makes])
        return c, f, ranks(c, f, rank)


def space(model, keeps, rank_shares):
    """The search space of `model`: every plain Conv2D whose output channels
    are a prunable group (`structured.prunable_convs`), with the shares
    `keeps` for each group and the ranks `rank_shares` for each conv Tucker-2
    can take (`tucker.is_decomposable`). ValueError when there is none."""
    g = structured.graph(model)
    prunable = set(structured.prunable_convs(model))
    group_of = {root: name for name, root in g.roots.items() if name in prunable}

    def atoms(tensor):
        return [(group_of.get(root), n, repeat)
                for root, n, repeat in g.spaces.atoms(g.segments[tensor])]
    convs, chosen = [], set()
    for node in g.nodes:
        layer = node.layer
        if type(layer) is not layers.Conv2D or layer.groups != 1 \
                or layer.data_format != "channels_last":
            continue
        made = atoms(node.outputs[0])
        if len(made) != 1 or made[0][0] is None:
            continue
        group = made[0][0]
        convs.append(Conv(node.name, tuple(atoms(node.inputs[0])), group, group not in chosen,
                          tuple(rank_shares) if tucker.is_decomposable(layer) else (None,)))
        chosen.add(group)
    if not convs:
        raise ValueError("no conv whose filters can be removed: nothing to search")
    order = {c.makes: i for i, c in reversed(list(enumerate(convs)))}
    early = next(((c, grp) for i, c in enumerate(convs) for grp, _, _ in c.reads
                  if order.get(grp, -1) > i), None)
    if early:
        raise ValueError(f"conv {early[0].name!r} reads the channels of group {early[1]!r} "
                         "before any searched conv makes them")
    # a group read here but made by no searched conv keeps its channels
    convs = [Conv(c.name, tuple((grp if grp in chosen else None, n, r) for grp, n, r in c.reads),
                  c.makes, c.chooses, c.rank_shares) for c in convs]
    return Space(tuple(convs), {name: g.groups[name].size for name in chosen}, tuple(keeps))


# ---- configurations ----------------------------------------------------------------------

def configurations_key(configuration):
    """A configuration as text: "1/none 0.75/0.5 ..." (keep/rank per conv)."""
    return " ".join(f"{k:g}/{'none' if r is None else f'{r:g}'}" for k, r in configuration)


def parse_configuration(text):
    """The inverse of `configurations_key`."""
    return tuple((float(k), None if r == "none" else float(r))
                 for k, r in (pair.split("/") for pair in text.split()))


def group_shares(space, configuration):
    """dict group -> share kept under `configuration`; ValueError when its
    length or a group's share at two of its convs disagree."""
    if len(configuration) != len(space.convs):
        raise ValueError(f"a configuration of {len(configuration)} choices for "
                         f"{len(space.convs)} searched convs")
    shares = {}
    for conv, (keep, _) in zip(space.convs, configuration):
        if shares.setdefault(conv.makes, keep) != keep:
            raise ValueError(f"conv {conv.name!r} keeps {keep:g} of group {conv.makes!r}, "
                             f"which an earlier conv keeps {shares[conv.makes]:g} of")
    return shares


def widths(space, configuration):
    """Per searched conv: (input channels, output channels, Tucker ranks)."""
    shares = group_shares(space, configuration)
    return [space.widths(i, shares, rank) for i, (_, rank) in enumerate(configuration)]


def identity(space):
    """The configuration that changes nothing."""
    return tuple(IDENTITY for _ in space.convs)


def alone(space, index, choice):
    """The configuration with `choice` at conv `index` and nothing else
    changed but the convs that share its group (they keep the same share)."""
    group = space.convs[index].makes
    return tuple(choice if i == index else (choice[0] if c.makes == group else 1.0, None)
                 for i, c in enumerate(space.convs))


def measured_alone(space, index):
    """The choices whose loss is measured alone at conv `index`: every one at
    the conv that chooses its group's share, the ranks at full share at the
    others (`choice_loss`)."""
    full = {space.convs[index].makes: 1.0}      # a follower's share, the chooser's aside
    return [choice for choice in space.choices(index, full) if choice != IDENTITY]


def choice_loss(space, losses, index, choice):
    """The accuracy a choice loses, from the losses measured alone (dict
    configurations_key([choice]) -> loss, see `measured_alone`): the conv
    that chooses a group's share carries the share's loss, the others their
    rank's at full share. A choice measured to lose nothing (or to gain)
    counts as 0."""
    conv = space.convs[index]
    if not conv.chooses:
        choice = (1.0, choice[1])
    return 0.0 if choice == IDENTITY else max(0.0, losses[configurations_key([choice])])


def random_configuration(space, rng):
    """A configuration drawn uniformly, choice by choice (for calibration)."""
    shares, out = {}, []
    for index in range(len(space.convs)):
        options = space.choices(index, shares)
        choice = options[rng.integers(len(options))]
        shares[space.convs[index].makes] = choice[0]
        out.append(choice)
    return tuple(out)


def build(model, space, configuration, scores):
    """The model under `configuration`: in each group the channels of highest
    `scores` kept (dict group -> (size,)), then each conv whose rank is set
    Tucker-decomposed at its remaining widths; `model` is not changed."""
    shares = group_shares(space, configuration)
    counts = {g: kept(space.sizes[g], k) for g, k in shares.items() if k < 1}
    if counts:
        smaller = structured.remove_filters(model, structured.keep_indices(scores, counts))
    else:
        smaller = keras.models.clone_model(model)
        smaller.set_weights(model.get_weights())
    by_rank = {}
    for conv, (_, rank) in zip(space.convs, configuration):
        if rank is not None:
            by_rank.setdefault(rank, []).append(conv.name)
    for rank, names in by_rank.items():
        smaller, _ = tucker.decompose_model(smaller, lambda c, f, rank=rank: ranks(c, f, rank),
                                            layer_names=names)
    return smaller


# ---- blocks: what is timed -----------------------------------------------------------------

def segment(model, conv):
    """The layer `conv` and the channel-wise layers after it that read its
    channels alone, in order (what runs on its output before anything else)."""
    g = structured.graph(model)
    node = channels.node(g, conv)
    out, tensor = [node.layer], node.outputs[0]
    while tensor not in g.outputs:
        readers = [n for n in g.nodes if tensor in n.inputs]
        if len(readers) != 1 or len(readers[0].inputs) != 1 \
                or not isinstance(readers[0].layer, FOLLOWERS):
            break
        out.append(readers[0].layer)
        tensor = readers[0].outputs[0]
    return out


def block(model, conv, c, f, rank_pair, seed=0):
    """A model of one conv's block at input width `c` and output width `f`,
    decomposed at `rank_pair` (R1, R2) if given: the conv (or its three Tucker
    convs, biases as after batch-norm folding) and the channel-wise layers
    after it, random weights (a forward time does not depend on them)."""
    keras.utils.set_random_seed(seed)
    source, *rest = segment(model, conv)
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


def block_signature(model, conv):
    """What a block of `conv` is made of besides its widths (its layers'
    settings, names aside, and its input's height and width): two convs of
    one signature have the same blocks, timed once."""
    layers_ = segment(model, conv)
    settings = [(type(layer).__name__, {k: v for k, v in layer.get_config().items()
                                        if k not in ("name", "filters", "trainable")})
                for layer in layers_]
    return json.dumps([list(layers_[0].input.shape[1:3]), settings], sort_keys=True, default=str)


def block_key(c, f, rank_pair):
    """A block's name in the stored timings: "64x128", "64x128 r32x64"."""
    return f"{c}x{f}" + ("" if rank_pair is None else f" r{rank_pair[0]}x{rank_pair[1]}")


def block_widths(space, index):
    """Every (c, f, ranks) conv `index` can have: what to time for it."""
    conv = space.convs[index]
    groups = sorted({g for g, _, _ in conv.reads if g is not None} | {conv.makes})
    out = set()
    for picked in np.ndindex(*(len(space.keeps),) * len(groups)):
        shares = {g: space.keeps[i] for g, i in zip(groups, picked)}
        out.update(space.widths(index, shares, r) for r in conv.rank_shares)
    return sorted(out, key=lambda w: (w[0], w[1], w[2] or (0, 0)))


# ---- the search --------------------------------------------------------------------------

def best_configurations(space, latency, drop, resolution, limit=math.inf):
    """Every configuration worth considering: for each total predicted latency
    up to `limit` (in steps of `resolution` seconds) and the shares of the
    groups still open, the one of least predicted accuracy loss (see the
    module docstring).

    Parameters
    ----------
    space : `Space`
    latency : callable (conv index, (c, f, ranks)) -> seconds of its block
    drop : callable (conv index, choice) -> predicted accuracy loss of that choice
    resolution : seconds per latency step
    limit : seconds no configuration may exceed (a budget: the programme
        drops a partial configuration over it, as every conv adds time)

    Returns
    -------
    list of (predicted seconds, predicted loss, configuration), fastest first,
    each losing less than every faster one
    """
    last = {}      # group -> the last conv that reads or makes it
    for i, conv in enumerate(space.convs):
        for group in [g for g, _, _ in conv.reads if g is not None] + [conv.makes]:
            last[group] = i
    opened = ()
    states = {((), 0): (0.0, 0.0, ())}  # (open shares, latency steps) -> (seconds, loss, config)
    for index, conv in enumerate(space.convs):
        # the groups a later conv needs, and this conv's (in a chain, its share)
        after = tuple(g for g in opened if last[g] > index and g != conv.makes) + (conv.makes,)
        following = {}
        for (shares, _), (seconds, loss, config) in states.items():
            known = dict(zip(opened, shares))
            for choice in space.choices(index, known):
                known[conv.makes] = choice[0]
                total = seconds + latency(index, space.widths(index, known, choice[1]))
                if total > limit:
                    continue
                key = (tuple(known[g] for g in after), round(total / resolution))
                candidate = (total, loss + drop(index, choice), config + (choice,))
                if key not in following or candidate[1] < following[key][1]:
                    following[key] = candidate
        if len(following) > MAX_STATES:
            raise ValueError(f"the search holds {len(following):,} states after conv "
                             f"{conv.name!r} (at most {MAX_STATES:,}): too many groups open at "
                             "once; search fewer shares")
        states, opened = following, after
    ranked = sorted(states.values(), key=lambda s: (s[0], s[1]))
    front, best = [], math.inf  # keep only those that lose less than every faster one
    for seconds, loss, config in ranked:
        if loss < best - 1e-12:
            front.append((seconds, loss, config))
            best = loss
    return front


class Predictor:
    """The latency and accuracy models of one search, looked up in what was
    measured: `blocks` (conv -> block_key -> {"median": seconds, ...}),
    `losses` (conv -> configurations_key([choice]) -> accuracy lost alone)
    and `line` ({"slope", "intercept"}: the sum of blocks -> a whole model's
    seconds; None before it is fitted)."""

    def __init__(self, space, blocks, losses, line=None):
        self.space, self.blocks, self.losses, self.line = space, blocks, losses, line
        self._seconds = {}

    def block_seconds(self, index, widths):
        """The measured latency of conv `index`'s block at `widths` (c, f, ranks)."""
        key = (index, widths)
        if key not in self._seconds:
            self._seconds[key] = self.blocks[self.space.convs[index].name][
                block_key(*widths)]["median"]
        return self._seconds[key]

    def drop(self, index, choice):
        """The accuracy a choice loses (see `choice_loss`)."""
        return choice_loss(self.space, self.losses.get(self.space.convs[index].name, {}),
                           index, choice)

    def blocks_sum(self, configuration):
        """The sum of a configuration's blocks' latencies."""
        return sum(self.block_seconds(i, w)
                   for i, w in enumerate(widths(self.space, configuration)))

    def seconds(self, configuration):
        """A configuration's predicted latency: its blocks' sum through the line."""
        return self.line["slope"] * self.blocks_sum(configuration) + self.line["intercept"]

    def candidates(self, budget, resolution_steps):
        """The configurations predicted to lose least within `budget` seconds,
        slowest first (`within`), searched at `budget / resolution_steps`."""
        slope, intercept = self.line["slope"], self.line["intercept"]
        limit = (budget - intercept) / slope if slope > 0 else math.inf
        front = best_configurations(self.space, self.block_seconds, self.drop,
                                    budget / resolution_steps, limit)
        return within(front, self.seconds, budget, identity(self.space))


def within(front, predicted, budget, unchanged):
    """The configurations of `front` whose `predicted(config)` seconds meet
    `budget`, slowest (least loss) first; the `unchanged` one first of all
    where it meets it (a choice measured no worse than the original counts as
    losing nothing, so the front drops the original for anything faster)."""
    feasible = [config for _, _, config in front if predicted(config) <= budget]
    first = [unchanged] if unchanged not in feasible and predicted(unchanged) <= budget else []
    return first + list(reversed(feasible))


def aim_lower(factor, rows):
    """The next budget correction after a round of measured candidates (rows
    with "ratio" measured and "predicted_ratio") none of which met the budget:
    the median of measured / predicted, never below the correction so far."""
    return max(factor, float(sorted(r["ratio"] / r["predicted_ratio"]
                                    for r in rows)[len(rows) // 2]))


def fit_line(x, y):
    """Least-squares y = a * x + b, and R^2: how well a sum of blocks' latencies
    predicts a whole model's."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    a, b = np.polyfit(x, y, 1)
    residual = y - (a * x + b)
    total = np.sum((y - y.mean()) ** 2)
    return float(a), float(b), float(1 - np.sum(residual ** 2) / total) if total else 1.0
