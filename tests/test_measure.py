"""Parameter and FLOP counts against hand computation; the timing harness's shape."""

import keras
import numpy as np
import pytest
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


def test_a_layer_called_twice_counts_twice_and_nested_models_count():
    conv = layers.Conv2D(4, 3, padding="same", name="shared")
    big, small = keras.Input((8, 8, 3)), keras.Input((4, 4, 3))
    pooled = [layers.GlobalAveragePooling2D()(conv(x)) for x in (big, small)]
    model = keras.Model([big, small], layers.Dense(2)(layers.Concatenate()(pooled)))
    macs = (8 * 8 + 4 * 4) * 3 * 3 * 3 * 4 + 8 * 2
    assert measure.count_flops(model) == 2 * macs
    inner = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(2, 1)])
    outer = keras.Sequential([keras.Input((8, 8, 3)), layers.RandomFlip(), inner])
    assert measure.count_flops(outer) == 2 * 8 * 8 * 3 * 2


def test_nonzero_params_ignore_exact_zeros():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    kernel, bias = model.get_weights()
    kernel[0] = 0
    model.set_weights([kernel, np.zeros_like(bias)])
    assert measure.count_nonzero_params(model) == 12 - 3  # a zeroed kernel row, zero biases


def test_time_forward_times_every_model_over_every_batch(monkeypatch):
    models = {name: keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(2)])
              for name in ("a", "b")}
    batches = []
    real = measure.inference_function

    def counted(model):
        run = real(model)
        return lambda x: batches.append(len(x)) or run(x)
    monkeypatch.setattr(measure, "inference_function", counted)
    seconds = measure.time_forward(models, np.zeros((10, 4, 4, 1), "float32"), batch_size=4,
                                   repeats=3)
    assert set(seconds) == {"a", "b"} and all(len(s) == 3 for s in seconds.values())
    # 10 images in batches of 4, 4, 2; per model a warm-up pass and 3 timed ones
    assert batches == [4, 4, 2] * 2 + [4, 4, 2] * 6


def test_summaries_and_ratios_against_numbers_by_hand():
    assert measure.summarize_seconds([3.0, 1.0, 2.0]) == {
        "median": 2.0, "min": 1.0, "max": 3.0, "all": [3.0, 1.0, 2.0]}
    out = measure.side_by_side({"original": [2.0, 4.0, 3.0], "small": [1.0, 2.0, 1.5]},
                               "original", per=2)
    assert out["original"]["median"] == 1.5 and out["original"]["ratio"] == 1.0
    assert out["small"]["median"] == 0.75 and out["small"]["ratio"] == 0.5
    with pytest.raises(ValueError, match="baseline 'x' was not timed"):
        measure.side_by_side({"a": [1.0]}, "x")


def test_flops_of_a_tucker_model_by_the_closed_form():
    """H * W * (c * R1 + kh * kw * R1 * R2 + R2 * f) per decomposed conv."""
    from common import tucker
    model = keras.Sequential([keras.Input((6, 6, 8)),
                              layers.Conv2D(12, 3, padding="same", name="c")])
    decomposed, ranks = tucker.decompose_model(model, lambda c, f: (3, 5), layer_names=["c"])
    assert ranks == {"c": [3, 5]}
    assert measure.count_flops(decomposed) == 2 * 6 * 6 * (8 * 3 + 3 * 3 * 3 * 5 + 5 * 12)


def test_depthwise_and_separable_convs_are_counted_and_unknown_kernels_refused():
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              layers.DepthwiseConv2D(3, depth_multiplier=2),      # 6x6x6
                              layers.SeparableConv2D(4, 3, padding="same")])     # 6x6x4
    macs = 6 * 6 * 9 * 3 * 2 + (6 * 6 * 9 * 6 * 1 + 6 * 6 * 6 * 1 * 4)
    assert measure.count_flops(model) == 2 * macs
    einsum = keras.Sequential([keras.Input((5,)), layers.EinsumDense("ab,bc->ac", (3,),
                                                                     name="mix")])
    with pytest.raises(ValueError, match="'mix' \\(EinsumDense\\): its FLOPs are not counted"):
        measure.count_flops(einsum)
