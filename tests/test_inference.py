"""Batch norm folded into convs: same outputs, fewer layers, and only where legal."""

import keras
import numpy as np
import pytest
from keras import layers

from common.inference import fold_batchnorm


def randomize_batchnorm(model, seed=0, negative_scale=False):
    """Give every batch norm non-trivial statistics (fresh ones are the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            weights = []
            for w in layer.weights:
                name = w.path.split("/")[-1]
                shape = w.shape
                if name == "gamma":
                    value = rng.uniform(0.5, 2.0, shape) * (-1 if negative_scale else 1)
                elif name == "moving_variance":
                    value = rng.uniform(0.1, 3.0, shape)
                else:  # beta, moving_mean
                    value = rng.normal(size=shape)
                weights.append(value.astype("float32"))
            layer.set_weights(weights)


def conv_pool_norm_model(scale=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.BatchNormalization(scale=scale, name="bn1")(x)
    x = layers.Activation("gelu")(x)
    x = layers.Conv2D(6, 3, strides=2, padding="valid", name="conv2")(x)  # with a bias
    x = layers.BatchNormalization(scale=scale, name="bn2")(x)
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name="head")(x))


def images(n=5):
    return np.random.default_rng(1).normal(size=(n, 12, 12, 3)).astype("float32")


@pytest.mark.parametrize("scale", [True, False])
def test_folded_model_computes_the_same_outputs(scale):
    model = conv_pool_norm_model(scale)
    randomize_batchnorm(model)
    folded, pairs = fold_batchnorm(model)
    assert pairs == {"bn1": "conv1", "bn2": "conv2"}
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded.predict(images(), verbose=0),
                               model(images(), training=False), rtol=1e-4, atol=1e-5)


def test_sequential_models_fold_too():
    model = keras.Sequential([keras.Input((12, 12, 3)),
                              layers.Conv2D(4, 3, name="conv"),
                              layers.BatchNormalization(name="bn"),
                              layers.Flatten(), layers.Dense(2)])
    randomize_batchnorm(model)
    folded, pairs = fold_batchnorm(model)
    assert pairs == {"bn": "conv"}
    np.testing.assert_allclose(folded.predict(images(), verbose=0),
                               model(images(), training=False), rtol=1e-4, atol=1e-5)


def test_negative_scales_do_not_fold_through_max_pooling():
    model = conv_pool_norm_model()
    randomize_batchnorm(model, negative_scale=True)
    folded, pairs = fold_batchnorm(model)
    assert pairs == {"bn2": "conv2"}     # max(-x) != -max(x): bn1 stays
    np.testing.assert_allclose(folded.predict(images(), verbose=0),
                               model(images(), training=False), rtol=1e-4, atol=1e-5)


def test_no_fold_after_an_activation_or_a_shared_output():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    a = layers.Conv2D(4, 3, activation="relu", name="relu_conv")(inputs)
    a = layers.BatchNormalization(name="bn_after_relu")(a)
    b = layers.Conv2D(4, 3, name="shared_conv")(inputs)
    c = layers.BatchNormalization(name="bn_of_shared")(b)
    x = layers.Concatenate()([a, b, c])
    model = keras.Model(inputs, x)
    assert fold_batchnorm(model)[1] == {}
