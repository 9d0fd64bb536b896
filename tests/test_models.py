"""Model builders: shapes, pooling, the reference net's whitening and export."""

import keras
import numpy as np
from keras import layers

from common import models


def _count(model, kind):
    return sum(isinstance(layer, kind) for layer in model.layers)


def test_plain_cnn_has_no_pooling_and_the_study_s_3_2_million_weights():
    model = models.plain_cnn()
    assert model.output_shape == (None, 10)
    assert _count(model, layers.MaxPooling2D) == 0 and _count(model, layers.Conv2D) == 2
    # conv 3x3x3x32, conv 3x3x32x32 (28x28 left), dense 25088x128, dense 128x10, biases
    assert model.count_params() == (27 * 32 + 32) + (288 * 32 + 32) + (25088 * 128 + 128) \
        + (128 * 10 + 10) == 3_222_826
    assert model.layers[-1].activation is keras.activations.softmax


def test_pooled_cnn_pools_after_each_conv():
    model = models.pooled_cnn()
    assert _count(model, layers.MaxPooling2D) == 2
    assert model.get_layer("pool2").output.shape[1:] == (8, 8, 64)

def test_augmentation_is_inactive_at_inference():
    augmented, plain = models.pooled_cnn(augment=True), models.pooled_cnn()
    for layer in plain.layers:
        layer.set_weights(augmented.get_layer(layer.name).get_weights())
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(augmented(x, training=False), plain(x), atol=1e-6)
    assert not np.allclose(augmented(x, training=True), plain(x), atol=1e-3)


def test_whitening_kernel_decorrelates_patches():
    rng = np.random.default_rng(2)
    # Correlated pixels: a smooth random image plus a little noise per channel.
    base = rng.uniform(size=(200, 8, 8, 1)).repeat(4, axis=1).repeat(4, axis=2)
    images = np.clip(base + 0.05 * rng.normal(size=(200, 32, 32, 3)), 0, 1).astype("float32")
    kernel, bias = models.whitening_kernel(images, eps=1e-8)
    conv = layers.Conv2D(24, 2, padding="valid")
    conv.build((None, 32, 32, 3))
    conv.set_weights([kernel, bias])
    features = keras.ops.convert_to_numpy(conv(images)).reshape(-1, 24)
    features = features[:, :12]  # one sign of each filter
    np.testing.assert_allclose(features.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(features, rowvar=False), np.eye(12), atol=2e-2)


def test_reference_export_computes_the_same_function():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(16, 32, 32, 3)).astype("float32")
    trained = models.reference_cnn([8, 16, 16], whitening=models.whitening_kernel(x),
                                   shift_lr_multiplier=64)
    for layer in trained.layers:  # give every shift and BN statistic a value
        if isinstance(layer, models.ScaledShift):
            layer.b.assign(rng.normal(size=layer.b.shape))
        elif isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.normal(size=w.shape) if i == 0 else rng.uniform(0.5, 2, w.shape)
                               for i, w in enumerate(layer.get_weights())])
    exported = models.export_reference(trained, [8, 16, 16])
    assert not any(isinstance(layer, models.ScaledShift) for layer in exported.layers)
    np.testing.assert_allclose(exported(x), trained(x), atol=1e-5)
    assert exported.get_layer("whiten").trainable is False


def test_load_classifier_uses_safe_mode(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), layers.Flatten(),
                              layers.Lambda(lambda t: t * 2), layers.Dense(10)])
    model.save(tmp_path / "lambda.keras")
    try:
        models.load_classifier(str(tmp_path / "lambda.keras"))
    except ValueError as err:
        assert "not a loadable Keras model" in str(err)
    else:
        raise AssertionError("a model with a Lambda layer was loaded with safe mode off")
