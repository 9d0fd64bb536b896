"""Does Tucker-2 decomposition make the forward pass as much faster as its FLOPs say?

For k = 1..8 and batch sizes 1, 32 and 256, decomposes the model and times the
original and all eight decomposed models together (compiled inference
functions, warm-up excluded, interleaved repeats; see common.measure), then
prints the FLOPs ratio and the measured time ratio side by side.

    python bench/tucker_speed.py [--model models/reference.keras] [--repeats 5]

Not a test: read the ratios, measured in one run, not the absolute times.
Random images: the time of a forward pass does not depend on the pixels.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import common  # noqa: E402,F401
from common import measure, models, tucker  # noqa: E402

# Images per timed pass for each batch size: enough batches to average over,
# few enough that batch size 1 (one image per call) stays under a minute.
IMAGES = {1: 200, 32: 2048, 256: 4096}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join("models", "reference.keras"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    original = models.load_classifier(args.model)
    candidates = {"original": original}
    flops = {"original": measure.count_flops(original)}
    for k in range(1, 9):
        candidates[f"k{k}"], _ = tucker.decompose_model(
            original, lambda c, f, k=k: tucker.tucker_ranks(c, f, k))
        flops[f"k{k}"] = measure.count_flops(candidates[f"k{k}"])
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


if __name__ == "__main__":
    main()
