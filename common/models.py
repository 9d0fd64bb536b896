"""Model builders. Each returns an uncompiled Keras model for 32x32x3 inputs in [0, 1]."""

import keras
import numpy as np
from keras import layers

from common.data import IMAGE_SHAPE, NUM_CLASSES


def plain_cnn():
    """Step 4's CNN: two 3x3 conv layers, no pooling, a dense head.

    Without pooling the feature map stays 28x28x32 = 25088 values, so the dense
    layer holds most of the 3.2 M weights: the net memorises the training set
    and test accuracy saturates near 60%, as in the study.
    """
    return keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        layers.Conv2D(32, 3, activation="relu", name="conv1"),   # 30x30x32
        layers.Conv2D(32, 3, activation="relu", name="conv2"),   # 28x28x32
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="dense1"),
        layers.Dense(NUM_CLASSES, activation="softmax", name="output"),
    ], name="plain_cnn")


def augmentation(max_shift=0.125, seed=0, interpolation="bilinear"):
    """Random horizontal flip and shifts of up to `max_shift` of the image size
    (0.125 = 4 pixels), with reflected borders.

    Keras preprocessing layers run inside the model and only while training,
    so a model that contains them classifies un-augmented images unchanged.
    """
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomTranslation(max_shift, max_shift, fill_mode="reflect",
                                 interpolation=interpolation, seed=seed + 1),
    ], name="augmentation")


def pooled_cnn(augment=False, seed=0):
    """Step 6's CNN: step 4's convs with 2x2 max pooling after each ("same" padding).

    Pooling shrinks the feature map to 8x8x64, so the dense head has 16x fewer
    inputs than step 4's and the convs see a wider context.
    """
    stack = [keras.Input(IMAGE_SHAPE)]
    if augment:
        stack.append(augmentation(seed=seed))
    stack += [
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),  # 32x32x32
        layers.MaxPooling2D(name="pool1"),                                      # 16x16x32
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),  # 16x16x64
        layers.MaxPooling2D(name="pool2"),                                      # 8x8x64
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="dense1"),
        layers.Dense(NUM_CLASSES, activation="softmax", name="output"),
    ]
    return keras.Sequential(stack, name="augmented_cnn" if augment else "pooled_cnn")


def whitening_kernel(images, size=2, eps=5e-4):
    """A conv kernel that whitens `size`x`size` patches of `images` (airbench's first layer).

    The eigenvectors of the patch covariance, scaled by 1/sqrt(eigenvalue), map
    patches to decorrelated unit-variance features; each is used with both signs
    so that the GELU after it keeps the information in both halves.

    images : float (N, 32, 32, 3), already scaled as the model's input
    returns: float32 kernel (size, size, 3, 2 * 3 * size**2) and bias (2 * 3 * size**2,);
             the bias centres the outputs (the patches' mean maps to zero)
    """
    n, h, w, c = images.shape
    # Every size x size patch as a row: (N * (h-size+1) * (w-size+1), size*size*c),
    # flattened in Keras' kernel order (row, column, channel).
    patches = np.stack([images[:, i:h - size + 1 + i, j:w - size + 1 + j, :]
                        for i in range(size) for j in range(size)], axis=3)
    patches = patches.reshape(-1, size * size * c).astype(np.float64)
    mean = patches.mean(axis=0)
    centred = patches - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(patches))
    filters = eigenvectors / np.sqrt(eigenvalues + eps)        # (size*size*c, size*size*c)
    filters = np.concatenate([filters, -filters], axis=1)      # both signs
    kernel = filters.reshape(size, size, c, -1).astype(np.float32)
    return kernel, (-mean @ filters).astype(np.float32)


def _conv_block(x, width, name):
    """conv -> 2x2 max pool -> BN -> GELU -> conv -> BN -> GELU (airbench's ConvGroup)."""
    # Convs have no bias: the batch norm after each supplies the shift.
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn1")(x)
    x = layers.Activation("gelu", name=f"{name}_gelu1")(x)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn2")(x)
    return layers.Activation("gelu", name=f"{name}_gelu2")(x)


def reference_cnn(widths=(64, 256, 256), whitening=None):
    """The ~90% reference net for Parts 2 and 3, after airbench94.

    A frozen 2x2 whitening conv (3 -> 24 channels), three conv blocks that each
    halve the resolution (32 -> 16 -> 8 -> 4), 3x3 max pooling, and a bias-free
    linear head scaled by 1/9 (small logits, as airbench: it trains faster).

    whitening : (kernel, bias) from `whitening_kernel`, or None (trainable, random).
    """
    inputs = keras.Input(IMAGE_SHAPE)
    stem = layers.Conv2D(24, 2, padding="valid", name="whiten",
                         trainable=whitening is None)                  # 31x31x24
    x = layers.Activation("gelu", name="whiten_gelu")(stem(inputs))
    for i, width in enumerate(widths, start=1):
        x = _conv_block(x, width, f"block{i}")                          # 15, 7, 3
    x = layers.GlobalMaxPooling2D(name="pool")(x)                       # (width,)
    x = layers.Dense(NUM_CLASSES, use_bias=False, name="head")(x)
    x = layers.Rescaling(1 / 9, name="logit_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="softmax")(x)
    model = keras.Model(inputs, outputs, name="reference_cnn")
    if whitening is not None:
        stem.set_weights(list(whitening))
    _identity_init(model)
    return model


def _identity_init(model):
    """Make each 3x3 conv start as identity on its first c_in filters (airbench's
    dirac init): the block starts close to a residual path, which trains faster."""
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.kernel_size == (3, 3):
            kernel = keras.ops.convert_to_numpy(layer.kernel).copy()  # (3, 3, c, f)
            c = min(kernel.shape[2], kernel.shape[3])
            kernel[:, :, :, :c] = 0.0
            kernel[1, 1, np.arange(c), np.arange(c)] = 1.0
            layer.kernel.assign(kernel)
