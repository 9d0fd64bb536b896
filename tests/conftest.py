"""Tiny CIFAR-10 files in the official layout, and tiny models, made by the tests."""

import json
import os
import pickle
import tarfile

import numpy as np
import pytest

import common  # noqa: F401  (quiet TensorFlow before it is imported)

import keras  # noqa: E402

if keras.backend.backend() == "jax":
    # GPUs multiply float32 in TF32 by default (~1e-3 relative error); the
    # tests compare against float32 references at 1e-4.
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")

IMAGES_PER_BATCH = 20  # 5 train batches -> 100 training images, 20 test images


def make_batch(rng, n=IMAGES_PER_BATCH):
    """A batch dict as the official files hold it: R, G, B planes per row."""
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    return {b"batch_label": b"test", b"labels": [int(v) for v in labels],
            b"data": data, b"filenames": [b"img_%d.png" % i for i in range(n)]}, images, labels


def write_official_layout(folder, seed=0):
    """Write cifar-10-batches-py/ under `folder`; return the expected arrays."""
    rng = np.random.default_rng(seed)
    dest = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(dest, exist_ok=True)
    expected = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch, images, labels = make_batch(rng)
        with open(os.path.join(dest, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
        split = "test" if name == "test_batch" else "train"
        expected[split][0].append(images)
        expected[split][1].append(labels)
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in expected.items()}


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """(folder holding cifar-10-batches-py/, expected arrays)."""
    folder = str(tmp_path_factory.mktemp("cifar"))
    return folder, write_official_layout(folder)


@pytest.fixture(scope="session")
def tiny_cifar_archive(tmp_path_factory, tiny_cifar):
    """A folder holding only cifar-10-python.tar.gz with the same images."""
    folder = str(tmp_path_factory.mktemp("cifar_tar"))
    with tarfile.open(os.path.join(folder, "cifar-10-python.tar.gz"), "w:gz") as tar:
        tar.add(os.path.join(tiny_cifar[0], "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    return folder


@pytest.fixture
def batch_folder(tmp_path, tiny_cifar):
    """A writable copy of the tiny layout, for tests that damage one file."""
    import shutil
    dest = tmp_path / "cifar-10-batches-py"
    shutil.copytree(os.path.join(tiny_cifar[0], "cifar-10-batches-py"), dest)
    return dest


def argparse_error(main, argv, capsys):
    """Call a script's `main` with bad options; it must exit with status 2 and a
    one-line message on stderr. Returns that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, info.value.code
    assert len(err.splitlines()) == 1, err
    return err


def tiny_classifier(seed=0):
    """A small functional CIFAR-10 classifier with BN, a stride-2 conv and a 16->32 conv."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(32, 3, padding="valid", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    tiny_classifier().save(path)
    return path


def stored_run(folder, part, index=0):
    """Run `index` of results/<part>.json under `folder`, read as plain JSON."""
    with open(os.path.join(folder, "results", f"{part}.json")) as f:
        return json.load(f)["runs"][index]


@pytest.fixture
def no_repo_model(monkeypatch, tmp_path_factory):
    """The repository seen as one without models/reference.keras."""
    from common import cli
    monkeypatch.setattr(cli, "REPO_ROOT", str(tmp_path_factory.mktemp("empty_repo")))


def tiny_splits(n_train=40, n_validation=10, n_test=10, seed=0):
    """A `common.data.Splits` of random images, one-hot labels."""
    from common.data import Splits
    rng = np.random.default_rng(seed)

    def part(n):
        return (rng.uniform(size=(n, 32, 32, 3)).astype("float32"),
                np.eye(10, dtype="float32")[rng.integers(0, 10, n)])
    return Splits(part(n_train), part(n_validation), part(n_test), "random",
                  {"data": "random", "data_sha256": "0" * 64})


def make_run(folder, results_file="part9.json", schema=None, **settings):
    """A `common.runs.Run` of these settings in `folder`."""
    from common import runs
    return runs.Run(results_file, {"seed": 0, **settings}, output_dir=str(folder),
                    schema=schema)


@pytest.fixture
def sealed_test_set(monkeypatch):
    """The test set sealed: `Splits.test()` raises unless called from inside a
    function named by `opens(module, name)`, the script's report step."""
    from common import data
    state = {"open": 0, "reads": 0}
    real = data.Splits.test

    def guarded(self):
        if not state["open"]:
            raise AssertionError("the test set was read outside the report step")
        state["reads"] += 1
        return real(self)
    monkeypatch.setattr(data.Splits, "test", guarded)

    def opens(module, name="report"):
        original = getattr(module, name)

        def report_step(*args, **kwargs):
            state["open"] += 1
            try:
                return original(*args, **kwargs)
            finally:
                state["open"] -= 1
        monkeypatch.setattr(module, name, report_step)
    opens.state = state
    return opens
