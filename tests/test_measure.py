"""Parameter and FLOP counts against hand computation; the timing harness's shape."""

import keras
import numpy as np
from keras import layers

from common import measure


def test_flops_of_a_small_model_by_hand():
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              layers.Conv2D(4, 3, padding="same"),          # 8x8x4
                              layers.Conv2D(6, 3, strides=2, padding="valid"),  # 3x3x6
                              layers.Flatten(), layers.Dense(5)])
    macs = 8 * 8 * 3 * 3 * 3 * 4 + 3 * 3 * 3 * 3 * 4 * 6 + 54 * 5
    assert measure.count_flops(model) == 2 * macs
    assert measure.count_params(model) == (27 * 4 + 4) + (36 * 6 + 6) + (54 * 5 + 5)


def test_nonzero_params_ignore_exact_zeros():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    kernel, bias = model.get_weights()
    kernel[0] = 0
    model.set_weights([kernel, np.zeros_like(bias)])
    assert measure.count_nonzero_params(model) == 12 - 3  # a zeroed kernel row, zero biases


def test_time_forward_times_every_model_the_same_number_of_times():
    models = {name: keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(2)])
              for name in ("a", "b")}
    images = np.zeros((10, 4, 4, 1), "float32")
    seconds = measure.time_forward(models, images, batch_size=4, repeats=3)
    assert set(seconds) == {"a", "b"} and all(len(s) == 3 and min(s) > 0 for s in seconds.values())
    summary = measure.summarize_seconds(seconds["a"])
    assert summary["min"] <= summary["median"] <= summary["max"]
