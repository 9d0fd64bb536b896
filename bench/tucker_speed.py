"""Does Tucker-2 decomposition make the forward pass as much faster as its FLOPs say?

For k = 1..8 and batch sizes 1, 32 and 256, decomposes the model and times the
original and all eight decomposed models together (compiled inference
functions, warm-up excluded, interleaved repeats; see common.measure), each
with its batch norms folded into the convs as Part 3 times them, then
prints the FLOPs ratio and the measured time ratio side by side. Then, for one
k, times each decomposed conv alone against the conv it replaces (same input
shape, batch 256): where the whole model's time ratio comes from.

    python bench/tucker_speed.py [--model models/reference.keras] [--repeats 5] [--layer-k 4]

Not a test: read the ratios, measured in one run, not the absolute times.
Random images: the time of a forward pass does not depend on the pixels.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow is imported once the options are read (cli.load_backend), so that
# --help and a wrong option answer at once.
from common import cli, machine  # noqa: E402

# Images per timed pass for each batch size: enough batches to average over,
# few enough that batch size 1 (one image per call) stays under a minute.
IMAGES = {1: 200, 32: 2048, 256: 4096}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join("models", "reference.keras"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer-k", type=int, default=4, choices=range(1, 9))
    args = parser.parse_args(argv)
    cli.load_backend()
    import numpy as np

    from common import measure, models, tucker
    from common.inference import fold_batchnorm
    print(f"machine: {machine.label(machine.identity())}, {os.cpu_count()} threads")
    original = models.load_classifier(args.model)
    if not tucker.decomposable_convs(original):
        raise ValueError(f"{args.model}: no conv to decompose (Tucker-2 replaces a Conv2D "
                         "with a kernel larger than 1x1, not the first)")
    candidates = {"original": original}
    flops = {"original": measure.count_flops(original)}
    for k in range(1, 9):
        candidates[f"k{k}"], _ = tucker.decompose_model(
            original, lambda c, f, k=k: tucker.tucker_ranks(c, f, k))
        flops[f"k{k}"] = measure.count_flops(candidates[f"k{k}"])
    candidates = {name: fold_batchnorm(model)[0] for name, model in candidates.items()}
    images = np.random.default_rng(0).uniform(size=(max(IMAGES.values()), 32, 32, 3))
    images = images.astype("float32")
    print(f"{'k':>3} {'FLOPs ratio':>12}" + "".join(f"{f'time ratio b={b}':>18}" for b in IMAGES))
    ratios = {}
    for batch, count in IMAGES.items():
        seconds = measure.time_forward(candidates, images[:count], batch_size=batch,
                                       repeats=args.repeats)
        base = np.median(seconds["original"])
        ratios[batch] = {name: np.median(s) / base for name, s in seconds.items()}
    for k in range(1, 9):
        name = f"k{k}"
        print(f"{k:>3} {flops[name] / flops['original']:>12.3f}" +
              "".join(f"{ratios[b][name]:>18.3f}" for b in IMAGES))
    print_layer_ratios(original, args.layer_k, args.repeats)


def standalone(layers_, input_shape):
    """A model applying fresh copies of `layers_` (same weights) in sequence."""
    import keras
    inputs = x = keras.Input(input_shape)
    for layer in layers_:
        copy = layer.__class__.from_config(layer.get_config())
        x = copy(x)
        copy.set_weights(layer.get_weights())
    return keras.Model(inputs, x)


def print_layer_ratios(original, k, repeats, batch=256, count=2048):
    """Each decomposed conv of `original` at rank fraction k/8, timed alone
    against the conv it replaces, on random inputs of that layer's shape."""
    import numpy as np

    from common import measure, tucker
    print(f"\nk = {k}, each conv alone (batch {batch}, {count} inputs):")
    print(f"{'layer':<16} {'input':>12} {'FLOPs ratio':>12} {'time ratio':>11}")
    rng = np.random.default_rng(0)
    for name in tucker.decomposable_convs(original):
        conv = original.get_layer(name)
        shape = tuple(conv.input.shape[1:])
        pieces = tucker.decompose_conv(conv, tucker.tucker_ranks(shape[-1], conv.filters, k))
        pair = {"conv": standalone([conv], shape), "tucker": standalone(pieces, shape)}
        seconds = measure.time_forward(pair, rng.uniform(size=(count, *shape)).astype("float32"),
                                       batch_size=batch, repeats=repeats)
        flops = measure.count_flops(pair["tucker"]) / measure.count_flops(pair["conv"])
        time = np.median(seconds["tucker"]) / np.median(seconds["conv"])
        print(f"{name:<16} {'x'.join(map(str, shape)):>12} {flops:>12.3f} {time:>11.3f}")


if __name__ == "__main__":
    raise SystemExit(cli.run_main(main))
