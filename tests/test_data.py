import os
import pickle

import numpy as np
import pytest

from common.data import DataError, load_cifar10, preprocess


def test_loads_unpacked_folder(tiny_cifar):
    folder, expected = tiny_cifar
    (x_train, y_train), (x_test, y_test), source = load_cifar10(folder)
    assert x_train.shape == (100, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (20, 32, 32, 3)
    # The layout stores R, G, B planes: the loader must give back the pixels written.
    np.testing.assert_array_equal(x_train, expected["train"][0])
    np.testing.assert_array_equal(y_train, expected["train"][1])
    np.testing.assert_array_equal(x_test, expected["test"][0])
    np.testing.assert_array_equal(y_test, expected["test"][1])
    assert "cifar-10-batches-py" in source


def test_loads_batch_files_directly(tiny_cifar):
    folder, expected = tiny_cifar
    (x_train, _), _, _ = load_cifar10(os.path.join(folder, "cifar-10-batches-py"))
    np.testing.assert_array_equal(x_train, expected["train"][0])


def test_loads_tar_gz(tiny_cifar, tiny_cifar_archive):
    _, expected = tiny_cifar
    (x_train, y_train), (x_test, y_test), source = load_cifar10(tiny_cifar_archive)
    np.testing.assert_array_equal(x_train, expected["train"][0])
    np.testing.assert_array_equal(y_test, expected["test"][1])
    assert source.endswith("cifar-10-python.tar.gz")


def test_environment_variable_names_the_folder(tiny_cifar, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", tiny_cifar[0])
    (x_train, _), _, _ = load_cifar10()
    assert len(x_train) == 100


def _rewrite(path, batch):
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def _good_batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


@pytest.mark.parametrize("damage, message", [
    (lambda p: os.remove(p), "file not found"),
    (lambda p: open(p, "r+b").truncate(1000), "truncated"),
    (lambda p: open(p, "wb").write(np.random.default_rng(0).bytes(500)), "data_batch_3"),
    # pickle's own message for a persistent-id opcode spans two lines
    (lambda p: open(p, "wb").write(b"P0\n."), "persistent_load"),
    (lambda p: _rewrite(p, {b"pixels": 1}), "missing key"),
    (lambda p: _rewrite(p, [1, 2, 3]), "expected a dict"),
    (lambda p: _rewrite(p, {**_good_batch(p), b"data": np.zeros((20, 100), np.uint8)}),
     "shape (N, 3072)"),
    (lambda p: _rewrite(p, {**_good_batch(p), b"labels": [12] * 20}), "labels must be in 0..9"),
    (lambda p: _rewrite(p, {**_good_batch(p), b"labels": [1] * 7}), "labels of shape"),
])
def test_bad_batch_file_is_one_clear_error(batch_folder, damage, message):
    path = str(batch_folder / "data_batch_3")
    damage(path)
    with pytest.raises(DataError) as info:
        load_cifar10(str(batch_folder))
    text = str(info.value)
    assert message in text and "data_batch_3" in text
    assert "\n" not in text


class _Payload:
    """Unpickling this calls os.mkdir(<marker>): proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_would_run_code_is_refused(batch_folder, tmp_path):
    marker = tmp_path / "payload_ran"
    batch = _good_batch(str(batch_folder / "test_batch"))
    batch[b"filenames"] = _Payload(str(marker))
    _rewrite(str(batch_folder / "test_batch"), batch)
    with pytest.raises(DataError, match="refusing to load global posix.mkdir|refusing"):
        load_cifar10(str(batch_folder))
    assert not marker.exists()


def test_truncated_archive(tmp_path, tiny_cifar_archive):
    raw = open(os.path.join(tiny_cifar_archive, "cifar-10-python.tar.gz"), "rb").read()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_cifar10(str(tmp_path))


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_cifar10(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        load_cifar10(str(tmp_path))


def test_no_data_and_no_network_says_how_to_provide_it(monkeypatch):
    import keras

    def offline():
        raise OSError("Name or service not known")
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="--data-dir"):
        load_cifar10()


def test_preprocess_scales_and_one_hot_encodes():
    images = np.array([[[[0, 128, 255]]]], dtype=np.uint8).repeat(2, axis=0)
    x, y = preprocess(images, np.array([3, 9]))
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x[0, 0, 0], [0, 128 / 255, 1], rtol=1e-6)
    expected = np.zeros((2, 10), np.float32)
    expected[0, 3] = expected[1, 9] = 1
    np.testing.assert_array_equal(y, expected)


def test_a_batch_path_that_is_a_folder_is_named(batch_folder):
    (batch_folder / "data_batch_3").unlink()
    (batch_folder / "data_batch_3").mkdir()
    with pytest.raises(DataError, match="data_batch_3: is a folder"):
        load_cifar10(str(batch_folder.parent))


def test_the_fingerprint_names_the_arrays_not_the_path(tiny_cifar, tiny_cifar_archive):
    from common.data import fingerprint
    train, test, source = load_cifar10(tiny_cifar[0])
    from_archive = fingerprint(*load_cifar10(tiny_cifar_archive))
    assert fingerprint(train, test, source) == from_archive
    changed = (train[0].copy(), train[1])
    changed[0][0, 0, 0, 0] ^= 1
    assert fingerprint(changed, test, source) != from_archive
