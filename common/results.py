"""The results store: one JSON file per part, holding runs keyed by their settings.

    results/part3.json = {"runs": [{"settings": {...}, "meta": {...}, <sections>}, ...]}

`settings` is everything that changes a number (model digest, data digest,
limits, seed, recipe); a run with other settings is stored beside the others,
never over them. Every change is a read-modify-write of one run under a file
lock (`filelock`), written atomically (temporary file + rename), so that
concurrent runs keep each other's rows and a kill at any moment leaves the old
or the new file. The first run in a file is its primary run: its figures go
to figures/, those of any other run to figures/run-<label>/.
"""

import copy
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import filelock

# A writer holds the lock for one read + write of a file well under 1 MB;
# 10 minutes of waiting means another process is stuck holding it.
LOCK_TIMEOUT_S = 600


def write_json(path, obj):
    """Write `obj` as JSON so that a kill at any moment leaves the old or the new file."""
    folder = os.path.dirname(os.path.abspath(path))
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


def read_json(path):
    """The JSON value in `path`; ValueError naming the file for any problem."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a results file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, not a results file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None


def settings_label(settings):
    """8 hex digits naming a run's settings (its figure folder, its checkpoints)."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class ResultsStore:
    """One part's results file. Reading validates it: a file that is not a
    results file of this suite raises ValueError naming it."""

    def __init__(self, path):
        self.path = path
        self._lock = filelock.FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S)
        self.runs()

    def runs(self):
        """Every stored run, the primary one first ([] when there is no file)."""
        if not os.path.lexists(self.path):
            return []
        data = read_json(self.path)
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, list) or not all(
                isinstance(run, dict) and isinstance(run.get("settings"), dict) for run in runs):
            raise ValueError(f"{self.path}: not a results file of this suite (expected "
                             '{"runs": [{"settings": ...}, ...]}); move it away or pass '
                             "another --output-dir")
        return runs

    def find(self, settings):
        """The stored run with exactly these settings, or None."""
        return _run_with(self.runs(), settings)

    def update(self, settings, change, meta=None):
        """Apply `change(run)` to the run with these settings (made if absent),
        under the lock, and write the file; returns a copy of the run as stored.
        `meta` (versions, data path) replaces the run's metadata when given."""
        try:
            with self._lock:
                runs = self.runs()
                run = _run_with(runs, settings)
                if run is None:
                    run = {"settings": copy.deepcopy(settings)}
                    runs.append(run)
                if meta is not None:
                    run["meta"] = meta
                change(run)
                write_json(self.path, {"runs": runs})
        except filelock.Timeout:
            raise ValueError(f"{self.path}: another run has held its lock for "
                             f"{LOCK_TIMEOUT_S} s; if none is running, delete "
                             f"{self.path}.lock") from None
        return copy.deepcopy(run)

    def put(self, settings, section, key, value):
        """Store `value` as `run[section][key]` of the run with these settings."""
        return self.update(settings, lambda run: run.setdefault(section, {}).update({key: value}))

    def backup(self):
        """Copy the file beside itself with the time in its name (what --force
        replaces is kept there); returns the copy's path, None without a file."""
        if not os.path.exists(self.path):
            return None
        stem, ext = os.path.splitext(self.path)
        target = f"{stem}.backup-{time.strftime('%Y%m%dT%H%M%S')}{ext}"
        with self._lock:
            shutil.copy2(self.path, target)
        return target

    def figures_dir(self, figures_root, settings):
        """figures/ for the primary run, figures/run-<label>/ for any other (made)."""
        runs = self.runs()
        if not runs or runs[0]["settings"] == settings:
            return figures_root
        folder = os.path.join(figures_root, f"run-{settings_label(settings)}")
        os.makedirs(folder, exist_ok=True)
        return folder


def _run_with(runs, settings):
    return next((run for run in runs if run["settings"] == settings), None)


def runs_of_other_part(path):
    """The runs in another part's results file, for a figure that compares the
    two; None, with one warning line, when the file cannot be read."""
    try:
        return ResultsStore(path).runs()
    except ValueError as err:
        print(f"warning: {err}; the figure that needs it is skipped", file=sys.stderr)
        return None


def upsert(rows, key, row):
    """`rows` (a list of dicts) with `row` in place of the one of the same `key`,
    sorted by `key`."""
    kept = [r for r in rows if r[key] != row[key]]
    return sorted(kept + [row], key=lambda r: r[key])


def run_metadata(data_source=None):
    """Versions (Keras' backend library's too) and data source, stored with every run."""
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


def file_digest(path):
    """SHA-256 of a file: names the exact model a run was made from."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
