"""Results as data: atomic JSON files and the run metadata stored beside them."""

import hashlib
import json
import os
import platform
import tempfile


def write_json(path, obj):
    """Write `obj` as JSON so that a kill at any moment leaves the old or the new file.

    The text goes to a temporary file in the same folder, is flushed to disk,
    then renamed over `path` (an atomic replace on POSIX and Windows).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_json(path, default=None):
    """Read a results file; `default` if it does not exist.

    Raises ValueError naming the file when it exists but is not valid JSON.
    """
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        if default is None:
            raise ValueError(f"{path}: results file not found") from None
        return default
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def run_metadata(data_source=None):
    """Versions (Keras' backend library's too) and data source, stored with
    every results file."""
    import importlib

    import keras
    import numpy

    backend = keras.backend.backend()
    meta = {"python": platform.python_version(),
            backend: importlib.import_module(backend).__version__,
            "keras": keras.__version__,
            "numpy": numpy.__version__,
            "keras_backend": keras.backend.backend(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}
    if data_source is not None:
        meta["data_source"] = data_source
    return meta


def load_matching(path, settings, fresh=False):
    """The results at `path` if they were made with the same `settings` (a dict
    such as the model file, data limit and seed) and `fresh` is false; otherwise
    a new results dict holding just `settings`. Lets a rerun keep finished work
    and never mix numbers from different models or data."""
    results = read_json(path, default={})
    if results.get("settings") != settings or fresh:
        results = {"settings": settings}
    return results


def file_digest(path):
    """SHA-256 of a file: names the exact model a results file was made from."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
