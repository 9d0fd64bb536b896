"""Does bfloat16 compute make training faster on this machine?

Trains the reference model's fine-tuning copy (`models.with_precision`, as
`finetune.fine_tune` does) in float32 and in mixed_bfloat16, one epoch over the
same random images each, interleaved `--repeats` times, and prints the median
time ratio bf16 / float32 beside what `--precision auto` picks here.

    python bench/precision_speed.py [--model models/reference.keras] [--repeats 3]
    TF_ENABLE_ONEDNN_OPTS=0 python bench/precision_speed.py   # TensorFlow's plain kernels

Not a test: read the ratio, measured in one run, not the absolute times.
Random images: the time of a training step does not depend on the pixels.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow is imported once the options are read (cli.load_backend), so that
# --help and a wrong option answer at once.
from common import cli, machine, precision  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join("models", "reference.keras"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=512)   # fine-tuning's
    args = parser.parse_args()
    cli.load_backend()
    import keras
    import numpy as np

    from common import models
    print(f"machine: {machine.label(machine.identity())}, {os.cpu_count()} threads")
    original = models.load_classifier(args.model)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(args.images, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, args.images), 10)
    trainers = {}
    for policy in ("float32", "mixed_bfloat16"):
        trainers[policy] = models.with_precision(original, policy)
        trainers[policy].compile(keras.optimizers.SGD(0.01, momentum=0.85),
                                 "categorical_crossentropy")
        # Trace and warm up outside the timing.
        trainers[policy].fit(images[:args.batch_size], labels[:args.batch_size],
                             batch_size=args.batch_size, verbose=0)
    seconds = {policy: [] for policy in trainers}
    for _ in range(args.repeats):
        for policy, trainer in trainers.items():
            start = time.perf_counter()
            trainer.fit(images, labels, batch_size=args.batch_size, verbose=0)
            seconds[policy].append(time.perf_counter() - start)
    for policy, times in seconds.items():
        print(f"{policy:>15}: {args.images / np.median(times):7.0f} images/s "
              f"(epochs of {args.images}: {', '.join(f'{t:.1f}' for t in times)} s)")
    ratio = np.median(seconds["mixed_bfloat16"]) / np.median(seconds["float32"])
    print(f"time ratio bf16 / float32: {ratio:.2f} (median of {args.repeats}); "
          f"--precision auto picks {precision.resolve('auto')} here")


if __name__ == "__main__":
    main()
