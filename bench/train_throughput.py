"""Is the suite's training pipeline as fast as a bare `model.fit`?

For each Part 1 model, trains one epoch on the same in-memory images through
`common.training.fit_resumable` (per-epoch records, BackupAndRestore) and
through a bare `model.fit(x, y)`, both evaluating the same 1000 test images
after the epoch, in back-to-back pairs, and prints images/s side by side with
the median of the pairs' ratios (target: >= 0.9): the cost of the suite's
machinery. Because whole-run timings on a shared machine drift by more than
the 10% in question, it also times the suite's own callbacks (per-epoch
record, BackupAndRestore) from inside the suite's runs: their share of the
suite's run time is its overhead, measured directly.

    python bench/train_throughput.py [--images 20000] [--repeats 4] [--data-dir DIR]

Not a test: timings on a shared 2-core machine are noisy; read the ratio,
measured in one run, not the absolute numbers.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow is imported once the options are read (cli.load_backend), so that
# --help and a wrong option answer at once.
from common import cli, machine  # noqa: E402
from common.data import load_cifar10, preprocess  # noqa: E402

# Part 1's models (common.models builders and their options), compiled as
# part1_cnn.py compiles them (Adam 0.001, batch 64).
MODELS = {"plain (steps 4-5)": ("plain_cnn", {}), "pooled (step 6)": ("pooled_cnn", {}),
          "augmented (step 7)": ("pooled_cnn", {"augment": True})}
BATCH_SIZE = 64


def time_hooks(classes, seconds):
    """Wrap the callback hooks that `classes` define themselves so that their
    run time is added to seconds[0] (a one-item list). Inherited no-op hooks
    stay as they are: Keras skips those, and wrapping would make it call them."""
    for cls in classes:
        for name in [n for n in vars(cls) if n.startswith("on_")]:
            hook = getattr(cls, name)

            def timed(self, *args, _hook=hook, **kwargs):
                start = time.perf_counter()
                _hook(self, *args, **kwargs)
                seconds[0] += time.perf_counter() - start
            setattr(cls, name, timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    cli.load_backend()
    import keras
    import numpy as np

    from common import models
    from common.training import EpochRecorder, fit_resumable
    print(f"machine: {machine.label(machine.identity())}, {os.cpu_count()} threads")
    (x, y), test, _ = load_cifar10(args.data_dir)
    train = preprocess(x[:args.images], y[:args.images])
    test = preprocess(test[0][:1000], test[1][:1000])
    hook_seconds = [0.0]
    time_hooks([EpochRecorder, keras.callbacks.BackupAndRestore], hook_seconds)
    print(f"{'model':<20} {'suite img/s':>12} {'bare fit img/s':>15} {'ratio':>7} "
          f"{'ratio min-max':>14} {'callbacks s/epoch':>18} {'share':>6}")
    for label, (builder, options) in MODELS.items():
        model = getattr(models, builder)(**options)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                      metrics=["accuracy"])
        batch = BATCH_SIZE
        model.fit(*train, batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing

        def suite():
            with tempfile.TemporaryDirectory() as backup:
                fit_resumable(model, train, test, epochs=1, batch_size=batch,
                              backup_dir=backup, on_record=lambda r: None, verbose=0)

        def bare():
            model.fit(*train, validation_data=test, batch_size=batch, epochs=1, verbose=0)

        # Pairs run back to back, in alternating order; the ratio of each pair
        # cancels slow phases of the machine that last longer than a pair.
        speeds = {suite: [], bare: []}
        hook_seconds[0] = suite_seconds = 0.0
        for i in range(args.repeats):
            for fit in (suite, bare) if i % 2 == 0 else (bare, suite):
                start = time.perf_counter()
                fit()
                elapsed = time.perf_counter() - start
                speeds[fit].append(len(train[0]) / elapsed)
                suite_seconds += elapsed if fit is suite else 0.0
        ratios = np.array(speeds[suite]) / np.array(speeds[bare])
        print(f"{label:<20} {np.median(speeds[suite]):>12.0f} {np.median(speeds[bare]):>15.0f} "
              f"{np.median(ratios):>7.3f} {ratios.min():>7.2f}-{ratios.max():.2f} "
              f"{hook_seconds[0] / args.repeats:>18.2f} {hook_seconds[0] / suite_seconds:>6.1%}",
              flush=True)

if __name__ == "__main__":
    main()
