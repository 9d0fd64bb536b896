"""Is the suite's training pipeline as fast as a bare `model.fit`?

For each Part 1 model, trains one epoch on the same in-memory images through
`common.training.fit_resumable` (per-epoch records, BackupAndRestore) and
through a bare `model.fit(x, y)`, both evaluating the same 1000 test images
after the epoch, alternating the two, and prints images/s side by side with
their ratio (target: >= 0.9). The ratio is the cost of the suite's machinery.

    python bench/train_throughput.py [--images 20000] [--repeats 3] [--data-dir DIR]

Not a test: timings on a shared 2-core machine are noisy; read the ratio,
measured in one run, not the absolute numbers.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import common  # noqa: E402,F401
import part1_cnn  # noqa: E402
from common.data import load_cifar10, preprocess  # noqa: E402
from common.training import fit_resumable  # noqa: E402

MODELS = {"plain (steps 4-5)": "baseline", "pooled (step 6)": "maxpool",
          "augmented (step 7)": "augment"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    (x, y), test, _ = load_cifar10(args.data_dir)
    train = preprocess(x[:args.images], y[:args.images])
    test = preprocess(test[0][:1000], test[1][:1000])
    print(f"{'model':<20} {'suite img/s':>12} {'bare fit img/s':>15} {'ratio':>7}")
    for label, name in MODELS.items():
        config = part1_cnn.experiment_config(
            name, argparse.Namespace(epochs=1, batch_size=None, train_limit=None, seed=0))
        model, _, _ = part1_cnn.build_model(config, train[0])
        batch = config["batch_size"]
        model.fit(*train, batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing
        suite, bare = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as backup:
                start = time.perf_counter()
                fit_resumable(model, train, test, epochs=1, batch_size=batch,
                              backup_dir=backup, on_record=lambda r: None, verbose=0)
                suite.append(len(train[0]) / (time.perf_counter() - start))
            start = time.perf_counter()
            model.fit(*train, validation_data=test, batch_size=batch, epochs=1, verbose=0)
            bare.append(len(train[0]) / (time.perf_counter() - start))
        s, b = np.median(suite), np.median(bare)
        print(f"{label:<20} {s:>12.0f} {b:>15.0f} {s / b:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
