"""The channel dependency graph (common/channels.py), each layer kind on a
small seeded model: removal checked against the original model with the same
channels zeroed where they are made (an independent forward pass), FLOPs
against Keras-built models, layers it cannot follow kept whole."""

import keras
import numpy as np
import pytest
from keras import layers

from common import channels, measure, models
from common.deploy import to_flatbuffer


def images(n=4, size=8, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")


def randomized(model, seed=0):
    """Batch norms with random statistics and non-zero shifts, so that a wrong
    slice shows."""
    rng = np.random.default_rng(seed)
    for layer in models.leaf_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
    return model


def zeroed(model, made):
    """A copy of `model` whose channels `made[layer]` (indices into that layer's
    output) are zero where they are made: filters and bias of a conv or Dense,
    per-channel kernel of a depthwise conv, scale and shift of a batch norm."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, gone in made.items():
        layer = copy.get_layer(name)
        weights = [np.array(w) for w in layer.get_weights()]
        if isinstance(layer, layers.BatchNormalization):
            weights[0][gone] = weights[1][gone] = 0.0          # gamma, beta
        elif isinstance(layer, layers.DepthwiseConv2D):
            shape = weights[0].shape
            flat = weights[0].reshape(*shape[:2], -1)
            flat[..., gone] = 0.0
            weights[0] = flat.reshape(shape)
            weights[1][gone] = 0.0
        else:
            kernel = 1 if isinstance(layer, layers.SeparableConv2D) else 0
            weights[kernel][..., gone] = 0.0
            if len(weights) > kernel + 1:                      # the bias
                weights[-1][gone] = 0.0
        layer.set_weights(weights)
    return copy


def check(model, keep, made, atol=1e-5):
    """Removal equals zeroing; FLOPs from the graph equal Keras' count of the
    pruned model."""
    graph = channels.build(model)
    smaller = channels.remove(graph, keep)
    x = images(size=model.input_shape[1])
    np.testing.assert_allclose(smaller.predict(x, verbose=0),
                               zeroed(model, made).predict(x, verbose=0), atol=atol, rtol=0)
    assert channels.flops(graph, {k: len(v) for k, v in keep.items()}) == \
        measure.count_flops(smaller)
    return graph, smaller


def head(x, name="head"):
    return layers.Dense(3, name=name)(layers.GlobalAveragePooling2D(name=f"{name}_pool")(x))


def test_residual_add_couples_every_conv_that_writes_to_the_sum():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.BatchNormalization(name="s_bn")(layers.Conv2D(6, 3, padding="same",
                                                             name="stem")(inputs))
    y = layers.ReLU()(layers.BatchNormalization(name="b_bn1")(
        layers.Conv2D(4, 3, padding="same", name="b_conv1")(x)))
    y = layers.BatchNormalization(name="b_bn2")(layers.Conv2D(6, 3, padding="same",
                                                              name="b_conv2")(y))
    x = layers.ReLU()(layers.Add(name="add")([x, y]))
    model = randomized(keras.Model(inputs, head(x)))
    graph = channels.build(model)
    assert set(graph.groups) == {"stem", "b_conv1"}
    assert {m for m, _ in graph.groups["stem"].members} >= {"stem", "s_bn", "b_conv2",
                                                            "b_bn2", "b_conv1", "head"}
    gone = [1, 4]
    check(model, {"stem": [0, 2, 3, 5], "b_conv1": [0, 3]},
          {"stem": gone, "s_bn": gone, "b_conv2": gone, "b_bn2": gone,
           "b_conv1": [1, 2], "b_bn1": [1, 2]})


def test_concatenate_maps_each_input_to_its_slice():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(3, 1, name="a")(inputs)
    b = layers.Conv2D(5, 3, padding="same", name="b")(inputs)
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.Conv2D(4, 3, padding="same", name="c")(layers.BatchNormalization(name="bn")(x))
    model = randomized(keras.Model(inputs, head(x)))
    graph, smaller = check(model, {"a": [0, 2], "b": [1, 2, 4]},
                           {"a": [1], "b": [0, 3], "bn": [1, 3, 6]})
    assert smaller.get_layer("c").kernel.shape == (3, 3, 5, 4)
    assert smaller.get_layer("bn").moving_mean.shape == (5,)


def test_concatenate_tied_to_a_plain_tensor_splits_its_maker():
    """Add(Concatenate([a, b]), c): c's filters split into a slice tied to a
    and one tied to b."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(2, 1, name="a")(inputs)
    b = layers.Conv2D(3, 1, name="b")(inputs)
    c = layers.Conv2D(5, 3, padding="same", name="c")(inputs)
    x = layers.Add(name="add")([layers.Concatenate()([a, b]), c])
    model = keras.Model(inputs, head(x))
    graph = channels.build(model)
    assert sorted(graph.groups) == ["a", "b"]
    check(model, {"a": [1], "b": [0, 2]}, {"a": [0], "b": [1], "c": [0, 3]})


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_ties_its_outputs_to_its_inputs(multiplier):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = layers.BatchNormalization(name="bn0")(layers.Conv2D(4, 1, name="expand")(inputs))
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier, name="dw")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
    x = layers.Conv2D(3, 1, name="project")(x)
    model = randomized(keras.Model(inputs, head(x)))
    out_gone = [c * multiplier + j for c in (1, 2) for j in range(multiplier)]
    graph, smaller = check(model, {"expand": [0, 3]},
                           {"expand": [1, 2], "bn0": [1, 2], "dw": out_gone, "bn1": out_gone})
    assert list(graph.groups) == ["expand", "project"]
    assert smaller.get_layer("dw").kernel.shape == (3, 3, 2, multiplier)
    assert smaller.get_layer("project").kernel.shape == (1, 1, 2 * multiplier, 3)


def test_separable_conv_reads_and_makes_channels():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 1, name="a")(inputs)
    x = layers.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = layers.BatchNormalization(name="bn")(x)
    model = randomized(keras.Model(inputs, head(x)))
    _, smaller = check(model, {"a": [0, 2, 3], "sep": [1, 4]},
                       {"a": [1], "sep": [0, 2, 3], "bn": [0, 2, 3]})
    assert smaller.get_layer("sep").pointwise_kernel.shape == (1, 1, 6, 2)


def test_squeeze_excite_is_followed_through_reshape_and_multiply():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="swish", name="c")(inputs)
    s = layers.GlobalAveragePooling2D(name="squeeze")(x)
    s = layers.Reshape((1, 1, 6), name="reshape")(s)
    s = layers.Conv2D(2, 1, activation="relu", name="reduce")(s)
    s = layers.Conv2D(6, 1, activation="sigmoid", name="excite")(s)
    x = layers.Multiply(name="scale")([x, s])
    model = keras.Model(inputs, head(x))
    graph, smaller = check(model, {"c": [0, 1, 5], "reduce": [1]},
                           {"c": [2, 3, 4], "excite": [2, 3, 4], "reduce": [0]})
    assert set(graph.groups) == {"c", "reduce"}
    assert smaller.get_layer("reshape").target_shape == (1, 1, 3)


def test_a_layer_called_twice_ties_its_calls():
    keras.utils.set_random_seed(6)
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(4, 3, padding="same", name="b")(inputs)
    shared = layers.Conv2D(5, 3, padding="same", name="shared")
    x = layers.Add()([shared(a), shared(b)])
    model = keras.Model(inputs, head(x))
    graph = channels.build(model)
    assert sorted(graph.groups) == ["a", "shared"]       # a and b: one group, named first
    check(model, {"a": [1, 3], "shared": [0, 4]}, {"a": [0, 2], "b": [0, 2],
                                                    "shared": [1, 2, 3]})


def test_flatten_then_dense_reads_each_channel_at_every_position():
    keras.utils.set_random_seed(7)
    model = models.pooled_cnn()
    check(model, {"conv1": np.arange(0, 32, 3), "conv2": np.arange(1, 64, 2)},
          {"conv1": np.setdiff1d(np.arange(32), np.arange(0, 32, 3)),
           "conv2": np.arange(0, 64, 2)}, atol=1e-6)


def test_a_nested_model_is_opened_up():
    keras.utils.set_random_seed(8)
    inner_in = keras.Input((8, 8, 4))
    y = layers.BatchNormalization(name="inner_bn")(layers.Conv2D(4, 3, padding="same",
                                                                 name="inner_conv")(inner_in))
    inner = keras.Model(inner_in, layers.Add(name="inner_add")([inner_in, y]), name="block")
    inputs = keras.Input((8, 8, 3))
    x = inner(layers.Conv2D(4, 1, name="stem")(inputs))
    model = randomized(keras.Model(inputs, head(x)))
    graph = channels.build(model)
    assert graph.nested and sorted(graph.groups) == ["stem"]
    smaller = channels.remove(graph, {"stem": [0, 3]})
    flat = keras.Model(inputs, head_of(model, inner, inputs))   # same layers, one level
    flat_zeroed = zeroed(flat, {"stem": [1, 2], "inner_conv": [1, 2], "inner_bn": [1, 2]})
    x = images()
    np.testing.assert_allclose(smaller.predict(x, verbose=0),
                               flat_zeroed.predict(x, verbose=0), atol=1e-5)


def test_a_nested_model_whose_output_is_the_model_s_is_opened_up():
    """Model(inputs, backbone(preprocess(inputs))): the config names the
    backbone's call as its node 1 (its node 0 is its own construction)."""
    keras.utils.set_random_seed(8)
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, head(layers.Conv2D(4, 3, name="conv")(inner_in)), name="net")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, inner(layers.Rescaling(2.0, name="scale")(inputs)))
    graph = channels.build(model)
    assert graph.nested and sorted(graph.groups) == ["conv"]
    smaller = channels.remove(graph, {"conv": [0, 3]})
    x = images()
    twin = channels.zero_removed(graph, {"conv": [0, 3]})
    np.testing.assert_allclose(smaller.predict(x, verbose=0), twin.predict(x, verbose=0),
                               atol=1e-5)


def head_of(model, inner, inputs):
    """`model`'s outputs recomputed with `inner`'s layers called one by one."""
    x = model.get_layer("stem")(inputs)
    y = inner.get_layer("inner_bn")(inner.get_layer("inner_conv")(x))
    x = inner.get_layer("inner_add")([x, y])
    return model.get_layer("head")(model.get_layer("head_pool")(x))


def test_removing_nothing_changes_nothing():
    model = randomized(models.cifar_resnet(20))
    x = images(size=32)
    same = channels.remove(channels.build(model), {})
    np.testing.assert_array_equal(same.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_whole_resnet_pruned_equals_zeroing_every_member():
    model = randomized(models.cifar_resnet(20), seed=1)
    graph = channels.build(model)
    assert len(graph.groups) == 1 + 3 * 3 + 2            # streams of 3 stages, 9 inner convs
    rng = np.random.default_rng(0)
    keep = {name: np.sort(rng.choice(g.size, g.size * 5 // 8, replace=False))
            for name, g in graph.groups.items()}
    made = {}
    for name, group in graph.groups.items():
        gone = np.setdiff1d(np.arange(group.size), keep[name])
        for member, role in group.members:
            layer = model.get_layer(member)
            if role == "out" or isinstance(layer, layers.BatchNormalization):
                where = channels.positions(graph, member, name)[0, :, 0]
                made[member] = np.union1d(made.get(member, []), where[gone]).astype(int)
    check(model, keep, made)


def test_layers_it_cannot_follow_keep_their_groups_whole_and_say_why():
    @keras.saving.register_keras_serializable(package="test_channels")
    class Odd(layers.Layer):
        def call(self, x):
            return x[..., ::-1]
    keras.utils.set_random_seed(9)
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    x = Odd(name="odd")(a)
    x = layers.Conv2D(6, 3, padding="same", groups=2, name="grouped")(x)
    x = layers.LayerNormalization(name="ln")(layers.Conv2D(5, 1, name="b")(x))
    x = layers.Conv2D(4, 1, name="c")(x)
    model = keras.Model(inputs, head(x))
    graph = channels.build(model)
    assert list(graph.groups) == ["c"]
    whole = dict(graph.whole)
    assert "not a layer this graph follows" in whole["odd"]
    assert "grouped conv (2 groups)" in whole["grouped"]
    assert "mixes channels" in whole["ln"]
    with pytest.raises(ValueError, match="'a' .* not a prunable conv .*odd.*choose from c"):
        channels.remove(graph, {"a": [0]})
    check(model, {"c": [0, 2]}, {"c": [1, 3]})


def test_a_subclassed_model_is_refused_in_one_line():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(2, 1)

        def call(self, x):
            return self.conv(x)
    net = Net()
    net(images())
    with pytest.raises(ValueError, match="no layer graph to read") as err:
        channels.build(net)
    assert "\n" not in str(err.value)


def test_a_pruned_model_saves_reloads_and_converts(tmp_path):
    model = randomized(models.cifar_resnet(20), seed=2)
    graph = channels.build(model)
    keep = {name: np.arange(0, g.size, 2) for name, g in graph.groups.items()}
    smaller = channels.remove(graph, keep)
    path = str(tmp_path / "small.keras")
    smaller.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    x = images(size=32)
    np.testing.assert_allclose(again.predict(x, verbose=0), smaller.predict(x, verbose=0),
                               atol=1e-6)
    flatbuffer = to_flatbuffer(smaller, "float32")
    assert flatbuffer[4:8] == b"TFL3"


def test_batch_norm_scale_is_summed_over_every_batch_norm_of_a_group():
    from common import structured
    inputs = keras.Input((8, 8, 3))
    a = layers.BatchNormalization(name="bn_a")(layers.Conv2D(3, 1, name="a")(inputs))
    b = layers.BatchNormalization(name="bn_b")(layers.Conv2D(3, 1, name="b")(inputs))
    x = layers.Add()([a, b])
    x = layers.BatchNormalization(scale=False, name="no_scale")(x)
    model = keras.Model(inputs, head(x))
    model.get_layer("bn_a").gamma.assign([1.0, -2.0, 3.0])
    model.get_layer("bn_b").gamma.assign([0.5, 0.5, -0.5])
    scores = structured.bn_scales(model, ["a"])
    np.testing.assert_allclose(scores["a"], [1.5, 2.5, 3.5])     # |gamma| summed, by hand
    lone = keras.Model(inputs, head(layers.Conv2D(2, 1, name="c")(inputs), "h2"))
    assert structured.bn_scales(lone, ["c"]) == {"c": None}


def test_a_sequential_inside_a_sequential_is_opened_up():
    """Part 1's trainer shape: augmentation layers in a nested Sequential."""
    keras.utils.set_random_seed(10)
    model = randomized(keras.Sequential([
        keras.Input((8, 8, 3)), models.augmentation(),
        layers.Conv2D(6, 3, activation="relu", name="c1"), layers.BatchNormalization(name="bn"),
        layers.Conv2D(4, 3, name="c2"), layers.GlobalAveragePooling2D(), layers.Dense(3)]))
    graph = channels.build(model)
    assert graph.nested and list(graph.groups) == ["c1", "c2"]
    smaller = channels.remove(graph, {"c1": [0, 2, 4]})
    flat = keras.Sequential([keras.Input((8, 8, 3))] + model.layers[1:])  # same layers
    x = images()
    np.testing.assert_allclose(smaller.predict(x, verbose=0), zeroed(
        flat, {"c1": [1, 3, 5], "bn": [1, 3, 5]}).predict(x, verbose=0), atol=1e-5)
