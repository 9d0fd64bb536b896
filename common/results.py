"""The results store: one JSON file per part, holding runs keyed by their settings.

    results/part3.json = {"runs": [{"settings": {...}, "meta": {...}, <sections>}, ...]}

`settings` is everything that changes a number (model digest, data digest,
limits, seed, recipe); a run with other settings is stored beside the others,
never over them. Every change is a read-modify-write of one run under a file
lock (`filelock`), written atomically (temporary file + rename), so that
concurrent runs keep each other's rows and a kill at any moment leaves the old
or the new file. The first run in a file is its primary run (see `common.runs`).

Reading validates the file: its shape, then each part's rows against that
part's schema (`check`), so that a damaged file stops a run with one line
naming the file, the row and the key before anything is written.
"""

import copy
import datetime
import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile

import filelock
import numpy

from common import machine

# A writer holds the lock for one read + write of a file well under 1 MB;
# 10 minutes of waiting means another process is stuck holding it.
LOCK_TIMEOUT_S = 600
# Results files of this suite are under 1 MB; anything far above is not one.
MAX_BYTES = 64 * 2**20


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
        if os.path.getsize(path) > MAX_BYTES:
            raise ValueError(f"{path}: {os.path.getsize(path):,} bytes, not a results "
                             f"file of this suite (they are under {MAX_BYTES:,})")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply, not a results file") from None
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


# ---- schemas: what a stored row must hold ------------------------------------
# A schema is a type (or tuple of types) the value must be an instance of; a
# dict {key: schema} (keys ending in "?" may be absent); a list [schema] of
# items; `Map(schema)`, a dict of any keys; or `Nullable(schema)`.
NUMBER = (int, float)


class Map:
    def __init__(self, schema):
        self.schema = schema


class Nullable:
    def __init__(self, schema):
        self.schema = schema


def check(value, schema, where):
    """Raise ValueError "<where>: ..." at the first place `value` breaks `schema`."""
    if isinstance(schema, Nullable):
        if value is not None:
            check(value, schema.schema, where)
    elif isinstance(schema, Map):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        for key, item in value.items():
            check(item, schema.schema, f"{where}.{key}")
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        for key, item_schema in schema.items():
            name = key.rstrip("?")
            if name in value:
                check(value[name], item_schema, f"{where}.{name}")
            elif not key.endswith("?"):
                raise ValueError(f"{where}: missing {name!r}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ValueError(f"{where}: expected {names}, got {json.dumps(value)[:40]}")


class ResultsStore:
    """One part's results file. Reading validates it: a file that is not a
    results file of this suite, or a run that breaks `schema` (a dict
    section -> schema, checked on each run), raises ValueError naming it."""

    def __init__(self, path, schema=None):
        self.path = path
        self.schema = schema or {}
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
        for i, run in enumerate(runs):
            try:
                check(run, {f"{section}?": schema for section, schema in self.schema.items()},
                      f"runs[{i}]")
            except ValueError as err:
                raise ValueError(f"{self.path}: damaged: {err}; restore it (git checkout, "
                                 "or a .backup- file beside it) or move it away") from None
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

    def upsert(self, settings, section, key, row):
        """Store `row` in the list `run[section]` in place of the row with the
        same `row[key]` (sorted by it). Returns the run as stored."""
        return self.update(settings, lambda run: run.update(
            {section: upsert(run.get(section, []), key, row)}))

    def backup(self):
        """Copy the file beside itself under a name no other backup has
        (results/<part>.backup-<time to the microsecond>[-n].json); returns
        the copy's path, None without a file."""
        if not os.path.exists(self.path):
            return None
        stem, ext = os.path.splitext(self.path)
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        with self._lock:
            for n in range(1000):
                target = f"{stem}.backup-{stamp}{f'-{n}' if n else ''}{ext}"
                try:
                    with open(self.path, "rb") as source, open(target, "xb") as copy_:
                        shutil.copyfileobj(source, copy_)
                    return target
                except FileExistsError:
                    continue
        raise ValueError(f"{self.path}: could not name a backup beside it")

    def remove(self, settings):
        """Delete the run with these settings (after a backup); returns the backup."""
        backup = self.backup()
        with self._lock:
            runs = [run for run in self.runs() if run["settings"] != settings]
            write_json(self.path, {"runs": runs})
        return backup


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


# The settings that say which model and data a run's rows were made from.
SAME_SOURCE = ("model_sha256", "data_sha256", "validation_sha256", "train_limit")


def runs_alike(path, settings, keys=SAME_SOURCE):
    """The runs in another part's results file whose settings equal `settings`
    on `keys` (by default: made from the same model and data); none, with one
    warning line, when the file cannot be read."""
    return [run for run in runs_of_other_part(path) or []
            if all(run["settings"].get(k) == settings.get(k) for k in keys)]


def upsert(rows, key, row):
    """`rows` (a list of dicts) with `row` in place of the one of the same `key`,
    sorted by `key`."""
    kept = [r for r in rows if r[key] != row[key]]
    return sorted(kept + [row], key=lambda r: r[key])


def run_metadata(data_source=None):
    """Versions (Keras' backend library's too), the machine (and the GPU or
    TPU it computed on, if any) and the data source, stored with every run
    when it is made."""
    import keras  # here: --plot-only and --help never load the backend

    backend = keras.backend.backend()
    meta = {"python": platform.python_version(),
            backend: importlib.import_module(backend).__version__,
            "keras": keras.__version__,
            "numpy": numpy.__version__,
            "keras_backend": keras.backend.backend(),
            "machine": machine.identity(),
            "accelerator": machine.accelerator()}
    if data_source is not None:
        meta["data_source"] = data_source
    return meta


def file_digest(path):
    """SHA-256 of a file: names the exact model a run was made from."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
