"""Does a conv run faster in LiteRT when its widths are a multiple of 8 or 16?

Item 4 of the channel-graph work: kept widths may be rounded to a multiple
the runtime prefers, if that is measured to pay. For the convs that filter
removal narrows (ResNet-56's 3x3 convs of its three stages, the reference's
widest), a 3x3 conv with ReLU is converted at output widths around a multiple
of 16 and timed alone in the LiteRT interpreter (XNNPACK, batch 1, 1 thread),
float32 and int8, all widths of one shape interleaved in one run. It prints
each width's time as a ratio to the multiple's: rounding pays if a width just
below a multiple is not faster than the multiple itself.

    python bench/width_rounding.py [--repeats 7]

Not a test: read the ratios, measured side by side in one run on this machine.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402,F401
from common import deploy, machine  # noqa: E402

# (name, input height and width, input channels, the multiple whose neighbours are timed)
SHAPES = [("ResNet-56 stage 1", 32, 16, 16), ("ResNet-56 stage 2", 16, 32, 32),
          ("ResNet-56 stage 3", 8, 64, 64), ("the reference's last block", 4, 256, 256)]
OFFSETS = (-8, -4, -2, -1, 0)       # widths the multiple less these


def conv_block(size, c, f):
    inputs = keras.Input((size, size, c))
    return keras.Model(inputs, keras.layers.Conv2D(f, 3, padding="same", activation="relu")(
        inputs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    print(f"LiteRT, batch 1, 1 thread, on {machine.label(machine.identity())}; "
          "each width's median time / the multiple's")
    print("| conv | precision | " + " | ".join(f"f = m{o:+d}" if o else "f = m"
                                                 for o in OFFSETS) + " |")
    print("|---|---|" + "---|" * len(OFFSETS))
    rng = np.random.default_rng(0)
    for name, size, c, multiple in SHAPES:
        images = rng.normal(size=(100, size, size, c)).astype("float32")
        for precision in ("float32", "int8"):
            widths = {f"{multiple + o}": multiple + o for o in OFFSETS}
            flatbuffers = dict(zip(widths, deploy.to_flatbuffers(
                [(conv_block(size, c, f), precision, images[:20], False)
                 for f in widths.values()])))
            seconds = deploy.time_per_image(flatbuffers, images, (1,), args.repeats)
            medians = {k: float(np.median(seconds[k, 1])) for k in widths}
            base = medians[str(multiple)]
            print(f"| {name}, {c} -> m = {multiple} | {precision} | " + " | ".join(
                f"{medians[str(multiple + o)] / base:.2f}" for o in OFFSETS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
