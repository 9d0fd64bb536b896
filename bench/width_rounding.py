"""Does a conv run faster in LiteRT when its widths are a multiple of 8 or 16?

Kept widths could be rounded to a multiple the runtime prefers, if that is
measured to pay. For the convs that filter
removal narrows (ResNet-56's 3x3 convs of its three stages, the reference's
widest), a 3x3 conv with ReLU is converted at output widths around a multiple
of 16 and timed alone in the LiteRT interpreter (XNNPACK, batch 1, 1 thread),
float32 and int8, all widths of one shape interleaved in one run. It prints
each width's time as a ratio to the multiple's: rounding pays if a width just
below a multiple is not faster than the multiple itself.

    python bench/width_rounding.py [--repeats 7]
    python bench/width_rounding.py --base models/resnet56.keras \
        --stage-widths 16,32,64 11,22,43 8,32,32 ...

With --base, the same question for whole ResNets: the base cut so that every
group of a stage keeps one width, each width triple a model, timed side by
side in float32 and int8 against the first triple. Time it on a quiet
machine: the ratios of a shared one drift (docs/resnet56.md).

Not a test: read the ratios, measured side by side in one run on this machine.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow is imported once the options are read (cli.load_backend), so that
# --help and a wrong option answer at once.
from common import cli, machine  # noqa: E402

# (name, input height and width, input channels, the multiple whose neighbours are timed)
SHAPES = [("ResNet-56 stage 1", 32, 16, 16), ("ResNet-56 stage 2", 16, 32, 32),
          ("ResNet-56 stage 3", 8, 64, 64), ("the reference's last block", 4, 256, 256)]
OFFSETS = (-8, -4, -2, -1, 0)       # widths the multiple less these


def conv_block(size, c, f):
    import keras
    inputs = keras.Input((size, size, c))
    return keras.Model(inputs, keras.layers.Conv2D(f, 3, padding="same", activation="relu")(
        inputs))


def stage_of(group):
    """0, 1 or 2: the stage of a CIFAR ResNet group (the stem feeds stage 1)."""
    return 0 if group.startswith(("stem", "stage1")) else 1 if group.startswith("stage2") else 2


def stage_widths(args):
    """A CIFAR ResNet cut to each (stage 1, 2, 3) width triple, every group of
    a stage at that width (filters by L1 norm: only shapes matter for time),
    batch norms folded, all timed interleaved in float32 and int8."""
    import keras
    import numpy as np

    from common import deploy, inference, measure, models, structured
    base = models.load_classifier(args.base)
    names = structured.prunable_convs(base)
    scores = structured.l1_norms(base, names)
    variants = {}
    for text in args.stage_widths:
        widths = [int(w) for w in text.split(",")]
        cut = structured.remove_filters(base, structured.keep_indices(
            scores, {n: widths[stage_of(n)] for n in names}))
        variants[text] = (inference.fold_batchnorm(cut)[0],
                          measure.count_flops(cut) / measure.count_flops(base))
    images = np.random.default_rng(0).normal(
        size=(200, *base.input_shape[1:])).astype("float32")
    flatbuffers, bar = {}, keras.utils.Progbar(2 * len(variants), unit_name="flatbuffer")
    for text, (model, _) in variants.items():
        for p in ("float32", "int8"):
            flatbuffers[f"{text} {p}"] = deploy.to_flatbuffer(model, p, images[:50])
            bar.add(1)
    seconds = deploy.time_per_image(flatbuffers, images, (1,), args.repeats, progress=True)
    first = f"{args.stage_widths[0]} float32"
    print(f"LiteRT, batch 1, 1 thread, on {machine.label(machine.identity())}; {args.base} "
          f"cut to each stage's width; median time / {first}'s "
          f"({1e3 * np.median(seconds[first, 1]):.3f} ms)")
    print("| widths (stage 1, 2, 3) | MACs / base | float32 | int8 |\n|---|---|---|---|")
    for text, (_, macs) in variants.items():
        print(f"| {text} | {macs:.3f} | " + " | ".join(
            f"{np.median(seconds[f'{text} {p}', 1]) / np.median(seconds[first, 1]):.3f}"
            for p in ("float32", "int8")) + " |")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--base", help="a CIFAR ResNet (with --stage-widths)")
    parser.add_argument("--stage-widths", nargs="+", metavar="W1,W2,W3",
                        help="widths of its three stages, one triple per model timed")
    args = parser.parse_args(argv)
    cli.load_backend()
    import keras
    import numpy as np

    from common import deploy
    keras.utils.set_random_seed(0)
    if args.base:
        return stage_widths(args)
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
