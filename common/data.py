"""Load and validate CIFAR-10, and preprocess it as the study does.

Sources, in order:

1. ``data_dir`` (or the ``CIFAR10_DIR`` environment variable): the official
   "CIFAR-10 python version", either unpacked (``cifar-10-batches-py/`` or its
   files directly in ``data_dir``) or as ``cifar-10-python.tar.gz``.
2. Keras' own download and cache (``keras.datasets.cifar10``).

Pickled batches are read with a restricted unpickler that only rebuilds numpy
arrays: a file that names any other global is refused before anything in it
runs. Every problem with a file raises :class:`DataError` naming the file.
"""

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

from common.quiet import quiet_stderr

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
BATCH_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ENV_VAR = "CIFAR10_DIR"
JPEG_COPY = "CIFAR-10 JPEG copy"
# The validation split: the last 5,000 training images, by index (the batch
# files are in a fixed shuffled order, so they hold every class: 467-541 each in
# the JPEG copy). The reference and every model made from it train on the other
# 45,000; every choice (a recipe constant, a criterion, a rank, a step of the
# latency search) is made on these, and the test set is read only to report.
# Part 1's steps 4-7 train on all 50,000, as in the study.
VALIDATION_SIZE = 5000
TRAIN_IMAGES = 50_000       # CIFAR-10's training set: a larger --train-limit is a mistake

# The only globals a CIFAR-10 batch pickle needs: numpy's array reconstructor,
# ndarray and dtype (numpy 1.x pickles say `numpy.core`, numpy 2.x `numpy._core`),
# and `_codecs.encode`, which protocol-2 pickles written by Python 3 use to
# rebuild bytes from text. None of these can run code.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class DataError(ValueError):
    """A CIFAR-10 file or folder that is missing, unreadable or malformed.

    The message is always one line: texts of wrapped exceptions (pickle's
    among them) can hold newlines, and the CLI prints this as its one error line.
    """

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, nothing else."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def parse_batch(raw, source):
    """Decode one pickled CIFAR-10 batch.

    Parameters
    ----------
    raw : bytes
        The file's contents.
    source : str
        Name used in error messages (a path, or ``archive:member``).

    Returns
    -------
    images : ndarray of uint8, shape (N, 32, 32, 3)
    labels : ndarray of int64, shape (N,), values in 0..9
    filenames : list of bytes (empty when the batch has none)
    """
    try:
        # encoding="bytes": the official files were written by Python 2.
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{source}: not a CIFAR-10 batch ({err})") from None
    except Exception as err:  # truncated or garbled pickles raise many types
        raise DataError(f"{source}: corrupt or truncated pickle "
                        f"({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a dict, got {type(batch).__name__}")
    missing = [k.decode() for k in (b"data", b"labels") if k not in batch]
    if missing:
        raise DataError(f"{source}: missing key(s) {', '.join(missing)}; "
                        f"found {sorted(str(k) for k in batch)}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
            or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{source}: 'data' must be uint8 of shape (N, 3072), "
                        f"got {dtype} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{source}: 'labels' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise DataError(f"{source}: {len(data)} images but labels of shape {labels.shape}")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.size:
        raise DataError(f"{source}: labels must be in 0..9, found {int(bad[0])}")
    # Rows are R, G, B planes of 32x32: (N, 3, 32, 32) -> (N, 32, 32, 3).
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels, list(batch.get(b"filenames", []))


def _read_folder(folder):
    def read(name):
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                return parse_batch(f.read(), path)
        except FileNotFoundError:
            raise DataError(f"{path}: file not found (the official layout has "
                            f"{', '.join(TRAIN_FILES + TEST_FILES)})") from None
        except IsADirectoryError:
            raise DataError(f"{path}: is a folder, expected a CIFAR-10 batch file") from None
        except OSError as err:
            raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    return read


def _read_archive(path):
    try:
        tar = tarfile.open(path, "r:gz")
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable tar.gz archive ({err})") from None

    def read(name):
        member = f"{BATCH_FOLDER}/{name}"
        source = f"{path}:{member}"
        if member not in members:
            raise DataError(f"{source}: missing from the archive")
        try:
            raw = tar.extractfile(members[member]).read()
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            raise DataError(f"{source}: cannot be read ({err}); "
                            "is the archive truncated?") from None
        return parse_batch(raw, source)
    return read


def _concat(reader, names):
    """Images, labels and file names of several batches, concatenated."""
    parts = [reader(name) for name in names]
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            [f for p in parts for f in p[2]])


def _find_reader(data_dir):
    """Pick the layout present in `data_dir`: folder, files, or archive."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: data folder not found")
    for folder in (os.path.join(data_dir, BATCH_FOLDER), data_dir):
        if os.path.exists(os.path.join(folder, TRAIN_FILES[0])):
            return _read_folder(folder), folder
    archive = os.path.join(data_dir, ARCHIVE_NAME)
    if os.path.exists(archive):
        return _read_archive(archive), archive
    raise DataError(f"{data_dir}: no CIFAR-10 found (expected {BATCH_FOLDER}/, "
                    f"the batch files, or {ARCHIVE_NAME})")


def _load_keras():
    try:
        with quiet_stderr():  # TensorFlow's start-up notices
            import keras
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as err:
        raise DataError(
            f"CIFAR-10 not found and Keras could not download it ({err}). Download "
            f"{ARCHIVE_NAME} (the 'CIFAR-10 python version', "
            "https://www.cs.toronto.edu/~kriz/cifar.html) and pass --data-dir (or set "
            f"{ENV_VAR}) to the folder holding it or its {BATCH_FOLDER}/.") from None
    return (x_train, y_train.reshape(-1)), (x_test, y_test.reshape(-1))


def load_cifar10(data_dir=None):
    """Load CIFAR-10 as uint8 images and integer labels.

    Parameters
    ----------
    data_dir : str, optional
        Folder with the official python-version data (see module docstring).
        Defaults to ``$CIFAR10_DIR``; when neither is set, Keras downloads it.

    Returns
    -------
    (x_train, y_train), (x_test, y_test), source
        Images uint8 (N, 32, 32, 3), labels int64 (N,) in 0..9, and a string
        naming where the data came from.
    """
    data_dir = data_dir or os.environ.get(ENV_VAR)
    if data_dir:
        reader, source = _find_reader(data_dir)
        *train, names = _concat(reader, TRAIN_FILES)
        *test, _ = _concat(reader, TEST_FILES)
        # The offline copy built from JPEGs names its files *.jpg (official: *.png);
        # its pixels differ slightly, so results must say which data they used.
        if names and bytes(names[0]).endswith(b".jpg"):
            source += f" ({JPEG_COPY})"
    else:
        train, test = _load_keras()
        source = "keras.datasets.cifar10"
    for name, (x, _) in (("train", train), ("test", test)):
        if x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{source}: {name} images have shape {x.shape[1:]}, "
                            f"expected {IMAGE_SHAPE}")
    return train, test, source


def fingerprint(train, test, source):
    """What results are keyed by: the kind of data and a SHA-256 of its arrays
    (the same for the official files read here or through Keras, other for
    the JPEG copy or any other set).

    train, test : (uint8 images (N, 32, 32, 3), int labels (N,)) as load_cifar10 returns
    """
    digest = hashlib.sha256()
    for images, labels in (train, test):  # labels as int64: Keras' loader gives uint8
        digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return {"data": JPEG_COPY if source.endswith(f"({JPEG_COPY})") else "CIFAR-10",
            "data_sha256": digest.hexdigest()}


def split_validation(images, labels, size=VALIDATION_SIZE):
    """The training set less its last `size` images, and those images.

    Returns
    -------
    train, validation : (images, labels) each
    record : {"validation": "train[45000:50000]", "validation_sha256": ...},
        the split by index and a SHA-256 of its images and labels, stored in
        the settings of every run that trains or chooses with it
    """
    if not 0 < size < len(images):
        raise DataError(f"a validation split of {size} images needs more than {size} "
                        f"training images, got {len(images)}")
    start = len(images) - size
    digest = hashlib.sha256(np.ascontiguousarray(images[start:], dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels[start:], dtype=np.int64).tobytes())
    record = {"validation": f"train[{start}:{len(images)}]",
              "validation_sha256": digest.hexdigest()}
    return (images[:start], labels[:start]), (images[start:], labels[start:]), record


class Splits:
    """What a part script works on, preprocessed (see `preprocess`).

    train, validation : (images, one-hot labels); validation is None for
        Part 1's steps 4-7, which train on every training image
    source : where the data came from;  data_id : what results are keyed by
        (`fingerprint`, and the validation split's record)

    The test set is read through `test()` alone, in a script's report step:
    nothing is chosen on it.
    """

    def __init__(self, train, validation, test, source, data_id):
        self.train, self.validation, self.source, self.data_id = \
            train, validation, source, data_id
        self._test = test

    def test(self):
        """The test set (images, one-hot labels): for reporting only."""
        return self._test


def load_for_run(data_dir, train_limit=None, validation=True):
    """Load CIFAR-10 and split it as a part script uses it (see `Splits`).

    validation : hold the last `VALIDATION_SIZE` training images out as the
        validation split (False: Part 1's steps 4-7, trained on all of them)
    train_limit : keep only the first N training images (quick runs)
    """
    (x_train, y_train), test, source = load_cifar10(data_dir)
    data_id = fingerprint((x_train, y_train), test, source)
    held_out = None
    if validation:
        size = min(VALIDATION_SIZE, len(x_train) // 10)  # tiny test data keep 90% to train
        (x_train, y_train), held_out, record = split_validation(x_train, y_train, size)
        data_id.update(record)
        held_out = preprocess(*held_out)
    return Splits(preprocess(x_train[:train_limit], y_train[:train_limit]), held_out,
                  preprocess(*test), source, data_id)


def preprocess(images, labels):
    """Scale pixels to float32 in [0, 1] and one-hot encode labels, as the study does.

    images : uint8 (N, 32, 32, 3) -> float32 (N, 32, 32, 3)
    labels : int (N,) -> float32 (N, 10)
    """
    x = images.astype(np.float32) / 255.0
    y = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    return x, y
