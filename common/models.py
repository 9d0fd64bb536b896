"""Model builders. Each returns an uncompiled Keras model for 32x32x3 inputs in [0, 1]."""

import keras
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


def augmentation(seed=0):
    """Step 7's augmentation: random horizontal flip and up to 4-pixel shifts.

    Keras preprocessing layers run inside the model and only while training,
    so the saved model classifies un-augmented images unchanged.
    """
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed + 1),
    ], name="augmentation")


def pooled_cnn(augment=False, seed=0):
    """Step 6's CNN: step 4's convs with 2x2 max pooling after each ("same" padding).

    Pooling shrinks the feature map to 8x8x64, so the dense head has 16x fewer
    inputs than step 4's and the convs see a wider context.
    """
    stack = [keras.Input(IMAGE_SHAPE)]
    if augment:
        stack.append(augmentation(seed))
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
