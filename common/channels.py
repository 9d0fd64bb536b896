"""The channel dependency graph of a Keras 3 model: which channels, of which
layers, must be removed together (DepGraph, Fang et al. CVPR 2023, for Keras).

Removing channel j of a tensor means removing it from every layer that makes
or reads that tensor, and from every tensor tied to it: the inputs of an Add
(or any element-wise merge) share one channel index, a Concatenate on the
channel axis places its inputs' channels side by side, a depthwise conv's
output channels are its input channels (each `depth_multiplier` times), a
batch norm or activation passes them through, and a Flatten -> Dense reads
each channel once per position. `build` follows these rules through the
whole model, nested sub-models and layers called at several places
included, and returns the **groups**: sets of channels that can only go
together. A group is named after the first layer that makes its channels.

A layer the rules do not cover (a custom layer, a Reshape that mixes
channels, a normalization over the channel axis, channels_first data) keeps
whole every group that reaches it, and the graph says which layer and why;
the rest of the model is still pruned.

Everything here reads the model through Keras' public API (`get_config()`'s
inbound nodes, `get_layer`, `compute_output_spec`) and changes nothing.
"""

from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

from common.models import ScaledShift

MERGES = (layers.Add, layers.Subtract, layers.Multiply, layers.Average,
          layers.Maximum, layers.Minimum)
# Layers that compute each channel from that channel alone (their per-channel
# weights, if any, lose the removed channels).
CHANNELWISE = (layers.BatchNormalization, layers.Activation, layers.ReLU, layers.LeakyReLU,
               layers.PReLU, layers.ELU, layers.Dropout, layers.SpatialDropout1D,
               layers.SpatialDropout2D, layers.GaussianNoise, layers.GaussianDropout,
               layers.AlphaDropout, layers.MaxPooling1D, layers.MaxPooling2D,
               layers.AveragePooling1D, layers.AveragePooling2D, layers.GlobalMaxPooling1D,
               layers.GlobalMaxPooling2D, layers.GlobalAveragePooling1D,
               layers.GlobalAveragePooling2D, layers.ZeroPadding2D, layers.Cropping2D,
               layers.UpSampling2D, layers.Identity, layers.Resizing, layers.RandomFlip,
               layers.RandomTranslation, layers.RandomRotation, layers.RandomZoom,
               layers.RandomCrop, ScaledShift)
# keras.ops called on tensors inside a functional model ("x + 3", "x * y"):
# element-wise, by class name (their module is keras' own, not public).
ELEMENTWISE_OPS = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum",
                   "Minimum", "Power"}
UNARY_OPS = {"Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu", "Tanh",
             "Abs", "Negative", "Square", "Sqrt", "Exp", "Log", "Softplus", "Elu", "Selu",
             "LeakyRelu", "Cast", "Clip", "Round", "Floor", "Ceil", "Sign", "Sin", "Cos"}
# Layers that make channels of their own (filters, units).
PRODUCERS = (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense, layers.SeparableConv1D,
             layers.SeparableConv2D, layers.Conv1DTranspose, layers.Conv2DTranspose,
             layers.DepthwiseConv1D, layers.DepthwiseConv2D)
# Activations that mix channels (over the last axis).
MIXING_ACTIVATIONS = ("softmax", "log_softmax")


@dataclass
class Node:
    """One call of a layer: the tensors it reads and writes (ids in the graph)."""
    layer: object
    name: str                    # unique in the graph (nested layers may share a name)
    inputs: list
    outputs: list
    call: tuple = None           # (args, kwargs) with tensor ids in place of tensors


@dataclass
class Group:
    """Channels that are removed together.

    name : the first layer that makes them (":a-b" added when they are a slice
        of its output channels)
    size : how many channels
    members : (node name, role) pairs, role "out" (it makes them), "in" (it
        reads them) or "through" (per-channel weights or a shape that follows)
    """
    name: str
    size: int
    members: list = field(default_factory=list)


@dataclass
class Graph:
    """A model's calls (`nodes`, in order), its tensors' shapes and channel
    segments, its `groups` (name -> `Group`) and the layers that keep groups
    whole (`whole`: (layer name, why))."""
    model: object
    nodes: list
    shapes: dict                 # tensor id -> shape (batch axis first)
    segments: dict               # tensor id -> [(space, length, repeat), ...]
    inputs: list
    outputs: list
    nested: bool
    spaces: object
    groups: dict = field(default_factory=dict)
    whole: list = field(default_factory=list)
    roots: dict = field(default_factory=dict)      # group name -> its space
    by_name: dict = field(default_factory=dict)    # node name -> Node

    def keep_by_root(self, keep):
        """{group name: indices} as {space: indices}."""
        return {self.roots[name]: np.asarray(indices, dtype=int)
                for name, indices in keep.items()}


class _Spaces:
    """Channel spaces: union-find over channel index ranges that are the same
    channels, with a space split into consecutive pieces where a Concatenate
    output is tied to a plain tensor."""

    def __init__(self):
        self.parent, self.length, self.pieces, self.why = [], [], [], []

    def new(self, length, why=None):
        self.parent.append(len(self.parent))
        self.length.append(int(length))
        self.pieces.append(None)
        self.why.append(why)
        return len(self.parent) - 1

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def atoms(self, segments):
        """[(root, length, repeat)] of unsplit spaces, in channel order."""
        out = []
        for space, _, repeat in segments:
            root = self.find(space)
            if self.pieces[root] is None:
                out.append((root, self.length[root], repeat))
            else:
                out += self.atoms([(p, self.length[p], repeat) for p in self.pieces[root]])
        return out

    def pin(self, segments, why):
        for root, _, _ in self.atoms(segments):
            if self.why[root] is None:
                self.why[root] = why

    def _misaligned(self, atoms, cuts):
        """Split the first atom that a cut falls inside: "split", None when no
        cut does, or why it cannot be split (a cut inside a repeated channel)."""
        start = 0
        for root, n, r in atoms:
            inner = [c - start for c in sorted(cuts) if start < c < start + n * r]
            if inner:
                if any(offset % r for offset in inner):
                    return "depth multipliers do not line up"
                bounds = [0, *(offset // r for offset in inner), n]
                self.pieces[root] = [self.new(size, self.why[root])
                                     for size in np.diff(bounds).tolist()]
                return "split"
            start += n * r
        return None

    def tie(self, a, b, why):
        """Make two tensors' channels the same channels, splitting spaces where
        their boundaries differ; returns None, or the reason they could not be
        tied (both are then pinned)."""
        while True:
            atoms = [self.atoms(a), self.atoms(b)]
            ends = [set(np.cumsum([n * r for _, n, r in side]).tolist()) for side in atoms]
            if max(ends[0]) != max(ends[1]):
                problem = "channel counts differ"
                break
            problem = self._misaligned(atoms[0], ends[1]) or \
                self._misaligned(atoms[1], ends[0])
            if problem == "split":
                continue
            if problem is None:
                if any(ra[2] != rb[2] for ra, rb in zip(*atoms)):
                    problem = "depth multipliers do not line up"
                    break
                for (ra, _, _), (rb, _, _) in zip(*atoms):
                    ra, rb = self.find(ra), self.find(rb)
                    if ra != rb:
                        self.parent[rb] = ra
                        self.why[ra] = self.why[ra] or self.why[rb]
            break
        if problem:
            self.pin(a, f"{why}: {problem}")
            self.pin(b, f"{why}: {problem}")
        return problem

    def kept(self, segments, keep):
        out, offset = [], 0
        for root, n, r in self.atoms(segments):
            indices = keep.get(root, np.arange(n))
            out.append(offset + (indices[:, None] * r + np.arange(r)[None, :]).ravel())
            offset += n * r
        return np.concatenate(out) if out else np.zeros(0, dtype=int)


# ---- reading the model ---------------------------------------------------------

class _Id(int):
    """A tensor's id in the graph (an int that says it is one)."""


def _is_tensor(value):
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _map_tensors(value, fn):
    if _is_tensor(value):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _leaves(value):
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    return [value]


class _Reader:
    """Flattens a model (nested models opened up) into calls of leaf layers."""

    def __init__(self):
        self.nodes, self.shapes, self.names, self.nested = [], {}, set(), False
        self.counter = 0

    def tensor(self, shape):
        self.counter += 1
        self.shapes[self.counter] = tuple(shape)
        return _Id(self.counter)

    def unique(self, name, scope):
        flat = name if name not in self.names else f"{scope}_{name}"
        while flat in self.names:
            flat += "_"
        self.names.add(flat)
        return flat

    def call(self, layer, args, kwargs, scope):
        """Outputs (tensor ids, nested like the layer's outputs) of one call."""
        if isinstance(layer, keras.Model):
            self.nested = True
            outputs = self.model(layer, _leaves(args), scope=layer.name)
            return outputs[0] if len(outputs) == 1 else outputs
        specs = keras.tree.map_structure(
            lambda t: keras.KerasTensor(self.shapes[t]) if isinstance(t, _Id) else t, args)
        try:
            out = layer.compute_output_spec(*specs, **{k: v for k, v in kwargs.items()
                                                      if k not in ("mask", "training")})
        except Exception as err:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): its output "
                             f"shape cannot be computed ({str(err).splitlines()[0]})") from None
        outputs = keras.tree.map_structure(lambda spec: self.tensor(spec.shape), out)
        self.nodes.append(Node(layer, self.unique(layer.name, scope),
                               [t for t in _leaves(args) if isinstance(t, _Id)],
                               list(keras.tree.flatten(outputs)), (args, kwargs)))
        return outputs

    def model(self, model, inputs, scope=""):
        """Read `model` called on tensor ids `inputs`; returns its output ids."""
        if isinstance(model, keras.Sequential):
            x = inputs[0]
            for layer in model.layers:
                x = self.call(layer, (x,), {}, scope)
            return [x]
        if not hasattr(model, "get_config") or "layers" not in (model.get_config() or {}):
            raise ValueError(f"model {model.name!r} ({type(model).__name__}) has no layer "
                             "graph to read (a subclassed model); save it as a functional "
                             "or Sequential model")
        config = model.get_config()
        operations = {op.name: op for op in model.operations}
        made = {}
        for (name, node, index), tensor in zip(config["input_layers"]
                                               if isinstance(config["input_layers"][0], list)
                                               else [config["input_layers"]], inputs):
            made[(name, node, index)] = tensor
        for entry in config["layers"]:
            if entry["class_name"] == "InputLayer":
                continue
            layer = operations[entry["name"]]
            for k, inbound in enumerate(entry["inbound_nodes"]):
                def ref(t):
                    return made[_listed(t["config"]["keras_history"], made)]
                args = _map_tensors(inbound["args"], ref)
                kwargs = _map_tensors(inbound.get("kwargs", {}), ref)
                out = self.call(layer, args, kwargs, scope)
                for i, tensor in enumerate(keras.tree.flatten(out)):
                    made[(entry["name"], k, i)] = tensor
        outputs = config["output_layers"]
        outputs = outputs if isinstance(outputs[0], list) else [outputs]
        return [made[_listed(o, made)] for o in outputs]


def _listed(history, made):
    """The key of `made` a tensor reference (layer name, node index, tensor
    index) of a model's config names. A nested functional model has a node of
    its own (its construction) before its calls, which the config counts in
    the reference but does not list among its inbound nodes."""
    name, node, index = history
    if (name, node, index) not in made and (name, node - 1, index) in made:
        return (name, node - 1, index)
    return (name, node, index)


# ---- the rules -------------------------------------------------------------------

def _weights(operation):
    """An operation's weights (keras.ops in a functional model have none)."""
    return getattr(operation, "weights", [])


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _axis_is_last(axis, rank):
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return any(a in (-1, rank - 1) for a in axes)


def build(model):
    """The channel dependency graph of a functional or Sequential Keras model.

    Returns a `Graph`: its `groups` (name -> `Group`) are the channels that
    can be removed, its `whole` the layers that keep groups whole, with why.
    Raises ValueError for a model with no layer graph (subclassed).
    """
    reader = _Reader()
    if not isinstance(model, keras.Model):
        raise ValueError(f"{type(model).__name__} is not a Keras model")
    try:
        model_inputs = [reader.tensor(t.shape) for t in model.inputs]
    except (AttributeError, ValueError):
        raise ValueError(f"model {model.name!r} ({type(model).__name__}) has no layer graph "
                         "to read (a subclassed model, or one never built on an input)") \
            from None
    model_outputs = reader.model(model, model_inputs)
    spaces, segs, whole, roles, by_layer = _Spaces(), {}, [], [], {}

    def fresh(tensor, why=None):
        channels = reader.shapes[tensor][-1]
        segs[tensor] = [(spaces.new(channels, why), channels, 1)]

    def unpinned(tensors):
        return any(spaces.why[root] is None for t in tensors
                   for root, _, _ in spaces.atoms(segs[t]))

    def leave_whole(node, why):
        if unpinned(node.inputs) or isinstance(node.layer, PRODUCERS):
            whole.append((node.name, why))
        for t in node.inputs:
            spaces.pin(segs[t], f"{node.name}: {why}")
        for t in node.outputs:
            fresh(t, f"{node.name}: {why}")

    for t in model_inputs:
        fresh(t, "model input")
    for node in reader.nodes:
        layer, ins, outs = node.layer, node.inputs, node.outputs
        shape = reader.shapes[ins[0]] if ins else ()
        kind = type(layer)
        op = kind.__name__ if kind.__module__.startswith("keras.src.ops") else None
        if op in ELEMENTWISE_OPS and len(ins) > 1:
            kind = layers.Add                       # a merge, as the layers below
        if op in UNARY_OPS or (op in ELEMENTWISE_OPS and len(ins) == 1):
            segs[outs[0]] = segs[ins[0]]            # alone or with a constant: channel-wise
        elif not _channels_last(layer):
            leave_whole(node, "channels_first data")
        elif kind in (layers.Conv1D, layers.Conv2D, layers.Conv3D) and layer.groups > 1:
            if layer.groups == shape[-1] == layer.filters:    # one channel per group
                segs[outs[0]] = segs[ins[0]]
                roles.append((node, "through"))
            else:
                leave_whole(node, f"grouped conv ({layer.groups} groups)")
        elif kind in (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense,
                      layers.SeparableConv1D, layers.SeparableConv2D,
                      layers.Conv1DTranspose, layers.Conv2DTranspose):
            fresh(outs[0], f"{node.name}: frozen" if not layer.trainable else None)
            if not layer.trainable:
                whole.append((node.name, "frozen (trainable=False): its filters are kept"))
            roles += [(node, "in"), (node, "out")]
        elif kind in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
            m = layer.depth_multiplier
            segs[outs[0]] = [(s, n, r * m) for s, n, r in segs[ins[0]]]
            roles.append((node, "through"))
        elif issubclass(kind, MERGES):
            full = [t for t in ins if reader.shapes[t][-1] != 1 or
                    all(reader.shapes[u][-1] == 1 for u in ins)]    # broadcast inputs aside
            for t in full[1:]:
                spaces.tie(segs[full[0]], segs[t], node.name)
            segs[outs[0]] = segs[full[0]]
        elif kind is layers.Concatenate:
            if _axis_is_last(layer.axis, len(shape)):
                segs[outs[0]] = [seg for t in ins for seg in segs[t]]
            else:
                for t in ins[1:]:
                    spaces.tie(segs[ins[0]], segs[t], node.name)
                segs[outs[0]] = segs[ins[0]]
        elif kind is layers.Flatten:
            segs[outs[0]] = segs[ins[0]] * int(np.prod(shape[1:-1]))
        elif kind is layers.Reshape:
            if reader.shapes[outs[0]][-1] == shape[-1]:
                segs[outs[0]] = segs[ins[0]]
                roles.append((node, "through"))
            else:
                leave_whole(node, "Reshape that moves channels")
        elif kind is layers.LayerNormalization or (kind is layers.Softmax) or \
                (kind is layers.Activation and getattr(layer.activation, "__name__", "")
                 in MIXING_ACTIVATIONS):
            axis = getattr(layer, "axis", -1)
            if _axis_is_last(axis, len(shape)) and outs[0] not in model_outputs and \
                    unpinned(ins):
                whole.append((node.name, f"{kind.__name__} over the channel axis mixes "
                              "channels"))
                spaces.pin(segs[ins[0]], f"{node.name}: mixes channels")
            segs[outs[0]] = segs[ins[0]]
            roles.append((node, "through"))
        elif kind is layers.Rescaling and np.ndim(layer.scale) == 0 and \
                np.ndim(layer.offset) == 0:
            segs[outs[0]] = segs[ins[0]]
        elif kind in CHANNELWISE and len(ins) == 1 and len(outs) == 1:
            if kind is layers.BatchNormalization and not _axis_is_last(layer.axis, len(shape)):
                leave_whole(node, "batch norm over another axis")
                continue
            segs[outs[0]] = segs[ins[0]]
            if _weights(layer):
                roles.append((node, "through"))
        else:
            leave_whole(node, f"{kind.__name__}: not a layer this graph follows")
        by_layer.setdefault(id(layer), []).append(node)

    # A layer called at several places has one set of weights: its calls are tied.
    for calls in by_layer.values():
        if len(calls) > 1 and _weights(calls[0].layer):
            for other in calls[1:]:
                for a, b in zip(calls[0].inputs + calls[0].outputs,
                                other.inputs + other.outputs):
                    spaces.tie(segs[a], segs[b], f"{calls[0].name} (shared)")
    for t in model_outputs:
        spaces.pin(segs[t], "model output")
    graph = Graph(model, reader.nodes, reader.shapes, segs, model_inputs, model_outputs,
                  reader.nested, spaces, whole=whole,
                  by_name={n.name: n for n in reader.nodes})
    _name_groups(graph, roles)
    return graph


def _name_groups(graph, roles):
    """Each unpinned space that a layer makes is a group, named after the
    first layer (in call order) that makes it; then every layer that makes,
    reads or passes its channels is listed as a member."""
    spaces = graph.spaces
    names = {}
    for node, role in roles:
        if role != "out":
            continue
        atoms = spaces.atoms(graph.segments[node.outputs[0]])
        start = 0
        for root, n, repeat in atoms:
            if spaces.why[root] is None and root not in names:
                names[root] = node.name if len(atoms) == 1 else f"{node.name}:{start}-{start + n}"
                graph.groups[names[root]] = Group(names[root], n)
                graph.roots[names[root]] = root
            start += n * repeat
    for node, role in roles:
        tensor = node.outputs[0] if role == "out" else node.inputs[0]
        for root, _, _ in spaces.atoms(graph.segments[tensor]):
            members = graph.groups[names[root]].members if root in names else None
            if members is not None and (node.name, role) not in members:
                members.append((node.name, role))


# ---- reading a graph -------------------------------------------------------------------

def node(graph, name):
    """The `Node` (one call of a layer) named `name`."""
    if name not in graph.by_name:
        raise ValueError(f"no layer named {name!r}")
    return graph.by_name[name]


def positions(graph, member, group):
    """Where group `group`'s channels sit in the tensor that layer `member`
    makes ("out") or reads ("in", "through"): int array (occurrences, size,
    repeat) of channel indices; occurrences > 1 after a Flatten (once per
    position), repeat > 1 after a depthwise conv with a depth multiplier."""
    roles = {role for name, role in graph.groups[group].members if name == member}
    n = node(graph, member)
    tensor = n.outputs[0] if roles == {"out"} else n.inputs[0]
    root = graph.roots[group]
    out, offset = [], 0
    for atom, size, repeat in graph.spaces.atoms(graph.segments[tensor]):
        if atom == root:
            out.append(offset + np.arange(size)[:, None] * repeat + np.arange(repeat)[None, :])
        offset += size * repeat
    return np.stack(out)


def taps(graph, tensors):
    """A model from the graph's inputs to `tensors` (ids), on the model's own
    layers (same weights): what the layers between compute, for importance."""
    return _replay(graph, lambda layer, name: layer,
                   {id(n.layer): n.name for n in graph.nodes}, outputs=tensors)


# ---- removal -------------------------------------------------------------------------

def check_keep(graph, keep):
    """keep: dict group name -> indices; ValueError for anything off; returns
    the same with sorted unique int arrays."""
    checked = {}
    for name, indices in keep.items():
        if name not in graph.groups:
            layer = next((n for n in graph.nodes if n.name == name), None)
            choices = ", ".join(graph.groups) or "none"
            if layer is None:
                raise ValueError(f"no layer named {name!r}; prunable convs: {choices}")
            raise ValueError(f"layer {name!r} ({type(layer.layer).__name__}) is not a "
                             f"prunable conv ({kept_whole_because(graph, layer)}); "
                             f"choose from {choices}")
        size = graph.groups[name].size
        unique = np.unique(np.asarray(indices, dtype=int))
        if len(unique) != len(indices) or not 1 <= len(unique) <= size \
                or unique.min() < 0 or unique.max() >= size:
            raise ValueError(f"layer {name!r}: keep 1..{size} distinct filter indices in "
                             f"0..{size - 1}, got {len(indices)}")
        checked[name] = unique
    return checked


def kept_whole_because(graph, layer):
    """Why the channels `layer` (a Node) makes are not a group, in words."""
    if not layer.outputs or not isinstance(layer.layer, PRODUCERS):
        return "it makes no channels of its own"
    whys = [graph.spaces.why[root] for root, _, _ in
            graph.spaces.atoms(graph.segments[layer.outputs[0]])]
    why = next((w for w in whys if w), None)
    if why in ("model input", "model output"):
        return f"its channels are tied to the {why}"
    return f"kept whole by {why}" if why else "its channels are a group under another name"


def _sliced(node, graph, keep_roots):
    """(config changes, weights) of `node`'s layer once the groups keep `keep_roots`."""
    spaces = graph.spaces
    layer = node.layer
    weights = [np.asarray(w) for w in layer.get_weights()]
    i = spaces.kept(graph.segments[node.inputs[0]], keep_roots) if node.inputs else None
    o = spaces.kept(graph.segments[node.outputs[0]], keep_roots)
    kind = type(layer)
    changes = {}
    if kind in (layers.SeparableConv1D, layers.SeparableConv2D):
        m = layer.depth_multiplier
        mid = (i[:, None] * m + np.arange(m)[None, :]).ravel()
        weights[0] = weights[0][..., i, :]
        weights[1] = weights[1][..., mid, :][..., o]
        weights[2:] = [w[o] for w in weights[2:]]
        changes["filters"] = len(o)
    elif kind in (layers.Conv1DTranspose, layers.Conv2DTranspose):
        weights[0] = weights[0][..., o, :][..., i]
        weights[1:] = [w[o] for w in weights[1:]]
        changes["filters"] = len(o)
    elif kind in (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense) and \
            getattr(layer, "groups", 1) == 1:
        weights[0] = weights[0][..., i, :][..., o]
        weights[1:] = [w[o] for w in weights[1:]]
        changes["units" if kind is layers.Dense else "filters"] = len(o)
    elif kind in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
        weights[0] = weights[0][..., i, :]
        weights[1:] = [w[o] for w in weights[1:]]
    elif kind is layers.Reshape:
        changes["target_shape"] = (*layer.target_shape[:-1], len(o))
    elif kind in (layers.Conv1D, layers.Conv2D, layers.Conv3D) and \
            not layer.groups == weights[0].shape[-1] == graph.shapes[node.inputs[0]][-1]:
        pass                                    # a grouped conv, kept whole
    else:  # per-channel weights (batch norm, PReLU, one-channel-per-group conv)
        n = graph.shapes[node.outputs[0]][-1]
        weights = [w[..., o] if w.ndim and w.shape[-1] == n else w for w in weights]
        if kind in (layers.Conv1D, layers.Conv2D, layers.Conv3D):
            changes.update(filters=len(o), groups=len(o))
    return changes, weights


def remove(graph, keep):
    """A new model with only the `keep` channels of each group; the model is
    not changed and shares nothing with the result.

    keep : dict group name -> indices of the channels to keep
    Returns a model of the same standard Keras layers, each sliced: the
    layers that make a group's channels lose those filters, the layers that
    read them those inputs, per-channel weights those entries. A model
    with nested sub-models comes back flat (one functional model).
    """
    keep_roots = graph.keep_by_root(check_keep(graph, keep))
    plans = {}
    for node in graph.nodes:
        if node.name not in plans:
            plans[node.name] = _sliced(node, graph, keep_roots) if _weights(node.layer) or \
                type(node.layer) is layers.Reshape else ({}, [])
    first = {}
    for node in graph.nodes:
        first.setdefault(id(node.layer), node.name)

    def make(layer, name):
        config = layer.get_config()
        config.update(plans[name][0], name=name)
        return layer.__class__.from_config(config)

    if not graph.nested:
        def clone(layer):
            return make(layer, first[id(layer)])
        new = keras.models.clone_model(graph.model, clone_function=clone)
    else:
        new = _replay(graph, make, first)
    for node in graph.nodes:
        if _weights(node.layer) and node.name == first[id(node.layer)]:
            new.get_layer(node.name).set_weights(plans[node.name][1])
    return new


def _replay(graph, make, first, outputs=None):
    """A flat functional model calling the layers `make` returns in the
    graph's order, with the graph's outputs or `outputs` (tensor ids)."""
    tensors = {t: keras.Input(graph.shapes[t][1:]) for t in graph.inputs}
    built = {}
    for node in graph.nodes:
        key = id(node.layer)
        if key not in built:
            built[key] = make(node.layer, first[key])
        args, kwargs = node.call
        args = keras.tree.map_structure(lambda t: tensors[t] if isinstance(t, _Id) else t,
                                        args)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("mask",)}
        out = built[key](*args, **kwargs)
        for t, value in zip(node.outputs, keras.tree.flatten(out)):
            tensors[t] = value
    inputs = [tensors[t] for t in graph.inputs]
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs,   # called as it was built
                       [tensors[t] for t in (graph.outputs if outputs is None else outputs)],
                       name=graph.model.name)


def zero_removed(graph, keep):
    """A copy of the model, same layers (nested models opened up), in which
    the channels that `remove` would drop are zeroed where they are made: the filters and
    biases of the layers that make them, and the scale and shift of every
    batch norm (and per-channel shift) they pass. Its outputs equal the
    pruned model's where every layer between maps 0 to 0 (ReLU, GELU, swish,
    pooling, Add, Multiply, Concatenate): the independent check of `remove`.
    """
    keep_roots = graph.keep_by_root(check_keep(graph, keep))
    spaces = graph.spaces
    first = {}
    for node in graph.nodes:
        first.setdefault(id(node.layer), node.name)
    copy = _replay(graph, lambda layer, name: layer.__class__.from_config(
        {**layer.get_config(), "name": name}), first)              # flat, same layers
    for node in graph.nodes:
        if _weights(node.layer) and node.name == first[id(node.layer)]:
            copy.get_layer(node.name).set_weights(node.layer.get_weights())
    for node in graph.nodes:
        if not _weights(node.layer):
            continue
        n = graph.shapes[node.outputs[0]][-1]
        gone = np.setdiff1d(np.arange(n), spaces.kept(graph.segments[node.outputs[0]],
                                                      keep_roots))
        if not len(gone):
            continue
        target = copy.get_layer(node.name)
        weights = [np.array(w) for w in target.get_weights()]
        kind = type(node.layer)
        if kind is layers.BatchNormalization:
            names = [v.name for v in target.weights]
            for j, vname in enumerate(names):
                if vname in ("gamma", "beta"):
                    weights[j][gone] = 0.0
        elif kind in (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D,
                      layers.SeparableConv1D, layers.SeparableConv2D,
                      layers.DepthwiseConv1D, layers.DepthwiseConv2D):
            if kind in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
                kernel = weights[0].reshape(*weights[0].shape[:-2], -1)
                kernel[..., gone] = 0.0
                weights[0] = kernel.reshape(weights[0].shape)
            else:
                idx = 1 if kind in (layers.SeparableConv1D, layers.SeparableConv2D) else 0
                weights[idx][..., gone] = 0.0
            for j in range(len(weights)):
                if weights[j].ndim == 1 and weights[j].shape[0] == n:
                    weights[j][gone] = 0.0
        elif kind is ScaledShift:
            weights[0][gone] = 0.0
        target.set_weights(weights)
    return copy


def flops(graph, keep_counts=None):
    """Multiply-adds x 2 of one image's forward pass (Conv, Dense, depthwise
    and separable convs, as `measure.count_flops`) when each group keeps
    `keep_counts[name]` channels (the first ones; the count is what matters),
    computed from the shapes alone."""
    keep = {name: np.arange(count) for name, count in (keep_counts or {}).items()}
    keep_roots = graph.keep_by_root(keep)
    spaces = graph.spaces
    total = 0
    for node in graph.nodes:
        layer = node.layer
        kind = type(layer)
        if not node.inputs or kind not in (
                layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense,
                layers.DepthwiseConv1D, layers.DepthwiseConv2D, layers.SeparableConv1D,
                layers.SeparableConv2D, layers.Conv1DTranspose, layers.Conv2DTranspose):
            continue
        c = len(spaces.kept(graph.segments[node.inputs[0]], keep_roots))
        f = len(spaces.kept(graph.segments[node.outputs[0]], keep_roots))
        out_shape = graph.shapes[node.outputs[0]]
        positions = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
        if kind is layers.Dense:
            total += positions * c * f
            continue
        window = int(np.prod(layer.kernel_size))
        if kind in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
            total += positions * window * f
        elif kind in (layers.SeparableConv1D, layers.SeparableConv2D):
            total += positions * (window * c * layer.depth_multiplier +
                                  c * layer.depth_multiplier * f)
        elif kind in (layers.Conv1DTranspose, layers.Conv2DTranspose):
            in_positions = int(np.prod(graph.shapes[node.inputs[0]][1:-1]))
            total += in_positions * window * c * f
        else:
            total += positions * window * (c // getattr(layer, "groups", 1)) * f
    return int(2 * total)
