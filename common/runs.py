"""One run of a part script: its settings, its folder, what it stored, what it
may reuse. The frame every part script's `main()` puts around its own steps.

Where a run writes (results/, figures/, models/, checkpoints/):

- `--output-dir DIR` when given;
- else the repository, when its results file holds a run with exactly these
  settings (the committed runs) or no run at all, unless that run holds
  timings and none of this machine (then `runs/<part>-<label>-<machine>/`,
  seeded with the committed rows but not their timings: a run on another
  machine never changes a tracked file);
- else `runs/<part>-<label>/` in the repository (gitignored), `<label>` naming
  the settings: a quick run, a run on other data or on another machine never
  changes a tracked file, and the same command finds its folder again.

In a folder that holds runs of other settings (`--output-dir` given to both),
figures go to figures/run-<label>/ and a model whose file name another run's
row holds is saved as models/<name>-<label>.keras: no run overwrites another's.

Everything a run reuses is checked first: a model file against the digest its
row names (`Run.verified`), a timing against the machine it was measured on
(`Run.timing`). A row that would be replaced is kept in a backup first.
"""

import json
import os

from common import cli, machine
from common.data import load_for_run
from common.results import ResultsStore, file_digest, run_metadata, settings_label

RUNS_FOLDER = "runs"


def timed_elsewhere(run):
    """Whether `run` holds timings, none of them of this machine: a run of it
    here would add this machine's beside them (and redraw the figures from
    them), so it goes to runs/ instead."""
    blocks = [b for key, value in run.items() if key.endswith("timings")
              for b in (value or [])]
    here = machine.identity()
    return bool(blocks) and not any(machine.same_machine(b["machine"], here) for b in blocks)


def default_root(results_file, settings):
    """Where a run with `settings` writes when no --output-dir is given."""
    store = ResultsStore(os.path.join(cli.REPO_ROOT, "results", results_file))
    runs = store.runs()
    match = next((run for run in runs if run["settings"] == settings), None)
    if not runs or (match is not None and not timed_elsewhere(match)):
        return cli.REPO_ROOT
    part = os.path.splitext(results_file)[0]
    label = settings_label(settings) if match is None else \
        f"{settings_label(settings)}-{settings_label(machine.identity())}"
    return os.path.join(cli.REPO_ROOT, RUNS_FOLDER, f"{part}-{label}")


class Run:
    """A part's run with `settings`: its folders (`paths`), results store and
    stored state (`stored`, as found when it started).

    Parameters
    ----------
    results_file : e.g. "part3.json"
    settings : everything that changes the run's numbers (its key)
    output_dir : --output-dir, or None (see the module docstring)
    force : --force: stored items are made again (their rows kept in a backup)
    schema : the results file's schema (see `common.results.check`)
    meta : stored with the run when it is made (versions, machine, data source)
    """

    def __init__(self, results_file, settings, output_dir=None, force=False, schema=None,
                 meta=None):
        self.settings, self.force = settings, force
        self.root = output_dir or default_root(results_file, settings)
        self.paths = cli.output_paths(self.root)
        self.store = ResultsStore(os.path.join(self.paths["results"], results_file), schema)
        self.stored = self.store.find(settings) or {}
        self.label = settings_label(settings)
        self._backup = None
        self.model = None        # the run's model, loaded once by `start`
        stored = self.store.runs()
        if stored and stored[0]["settings"] != settings:  # not the file's primary run
            self.paths["figures"] = figures_folder(self.paths["figures"], settings)
        committed = None if self.root == cli.REPO_ROOT or output_dir is not None else \
            ResultsStore(os.path.join(cli.REPO_ROOT, "results", results_file), schema).find(
                settings)
        if committed is not None and not self.stored:
            # The committed run's rows (its models are checked by digest before any
            # reuse), not its timings: this machine's go beside them here.
            self.store.update(settings, lambda run: run.update(
                {k: v for k, v in committed.items() if not k.endswith("timings")}))
            self.stored = self.store.find(settings)
        if committed is not None:
            print(f"the committed run has no timing of this machine "
                  f"({machine.label(machine.identity())}): writing to "
                  f"{cli.shown_path(self.root)}/, its models reused")
        elif self.root != cli.REPO_ROOT and output_dir is None:
            print(f"settings other than the committed runs': writing to "
                  f"{cli.shown_path(self.root)}/")
        if not self.stored:
            self.store.update(settings, lambda run: None, meta=meta)

    # ---- the stored run ---------------------------------------------------------
    def find(self):
        """The run as stored now."""
        return self.store.find(self.settings) or {}

    def update(self, change):
        """Apply `change(run)` under the store's lock; returns the run as stored."""
        return self.store.update(self.settings, change)

    def back_up(self):
        """Copy the results file aside, once per run of the script; its path."""
        if self._backup is None:
            self._backup = self.store.backup()
            print(f"the rows it replaces are kept in {cli.shown_path(self._backup)}")
        return self._backup

    def upsert(self, section, key, row):
        """Store `row` in the list `section` in place of the one with the same
        `row[key]`; a different row it replaces is kept in a backup first."""
        old = next((r for r in self.find().get(section, []) if r[key] == row[key]), None)
        if replaces(old, row):
            self.back_up()
        return self.store.upsert(self.settings, section, key, row)

    def put(self, section, key, value):
        """Store `value` as `run[section][key]` (a different one kept in a backup)."""
        if replaces(self.find().get(section, {}).get(key), value):
            self.back_up()
        return self.store.put(self.settings, section, key, value)

    # ---- model files --------------------------------------------------------------
    def model_file(self, name, extension=".keras"):
        """models/<name>.keras of this run's folder (`extension` for a file
        beside it), or models/<name>-<label>.keras where a run of other
        settings in the same results file names that file: two runs in one
        folder never overwrite each other's models."""
        folder = self.paths["models"]
        files = {json.dumps(cli.shown_path(os.path.join(folder, name + e)))
                 for e in (".keras", extension)}
        if any(f in json.dumps(run) for run in self.store.runs()
               if run["settings"] != self.settings for f in files):
            name = f"{name}-{self.label}"
        return os.path.join(folder, name + extension)

    def save_model(self, model, name):
        """Save `model` as `model_file(name)`; the fields a row names it by."""
        path = self.model_file(name)
        model.save(path)
        return {"model": cli.shown_path(path), "model_sha256": file_digest(path)}

    def verified(self, row, what):
        """The path of the model file `row` names if it is there with the
        digest the row holds; else None, saying why in one line (a row made
        again then replaces this one, which is kept in a backup)."""
        problem = model_problem(row)
        if problem is None:
            return resolve(row["model"])
        if row:
            print(f"{what}: {problem}; making it again")
        return None

    # ---- timings --------------------------------------------------------------------
    def timing(self, section, digests, params, measure):
        """A timing of the models `digests` names (name -> SHA-256 of what is
        timed), with `params` (images, rounds, threads, batch size), on this
        machine: a stored one that timed all of them (and perhaps more) with
        the same parameters, else `measure()` (-> name -> summary) now,
        stored beside other machines' timings and beside this machine's
        earlier ones, in place of those it covers: a run that times fewer
        models never drops a timing of more."""
        here = machine.identity()
        for block in self.find().get(section, []):
            if (machine.same_machine(block["machine"], here) and block["params"] == params
                    and all(block["digests"].get(k) == v for k, v in digests.items())):
                print(f"{section}: timed on this machine already ({block['label']}), reused")
                return block
        block = {"machine": here, "label": machine.label(here), "params": params,
                 "digests": digests, **measure()}
        stale = [b for b in self.find().get(section, [])
                 if machine.same_machine(b["machine"], here) and b["params"] == params
                 and set(b["digests"]) <= set(digests)]
        if stale:
            self.back_up()
        self.update(lambda run: run.update({section: [
            b for b in run.get(section, []) if b not in stale] + [block]}))
        return block


def replaces(old, new):
    """Whether storing `new` where `old` is loses anything of `old` (a value
    changed or gone; keys only added lose nothing)."""
    if old is None:
        return False
    if isinstance(old, dict) and isinstance(new, dict):
        return any(k not in new or replaces(v, new[k]) for k, v in old.items())
    return old != new


def figures_folder(figures, settings):
    """figures/run-<label>/ (made): the figures of a run that is not its file's first."""
    folder = os.path.join(figures, f"run-{settings_label(settings)}")
    os.makedirs(folder, exist_ok=True)
    return folder


def resolve(path):
    """A path as rows store it (relative to the repository), made usable."""
    return path if os.path.isabs(path) else os.path.join(cli.REPO_ROOT, path)


def model_problem(row):
    """Why the model file a row names cannot be used as that row's model, or None."""
    if not row or not row.get("model") or not row.get("model_sha256"):
        return "no model file stored"
    path = resolve(row["model"])
    if not os.path.isfile(path):
        return f"{row['model']} is not there"
    if file_digest(path) != row["model_sha256"]:
        return f"{row['model']} has changed since its row was stored (digest differs)"
    return None


def start(results_file, args, settings, schema=None, model=True, validation=True,
          check=None):
    """The steps every part's main() starts with: the model path checked (before
    TensorFlow loads), the data loaded and split, Keras' backend imported, the
    model loaded and `check(model, path)` called (it raises ValueError for a
    model the part cannot use), the run opened: nothing is written for a
    model that fails. `settings(model_sha256, data_id)` -> the run's settings.

    Returns (run, splits, model_path); model_path is None without `model`.
    The model as loaded (nested models opened up: `structured.flattened`) and
    checked is `run.model` (None without one).
    """
    folder = args.output_dir or cli.REPO_ROOT  # a bad folder or results file fails first
    cli.output_paths(folder)
    ResultsStore(os.path.join(folder, "results", results_file), schema)
    model_path = cli.model_path(getattr(args, "model", None), args.output_dir) if model else None
    splits = load_for_run(args.data_dir, args.train_limit, validation)
    cli.load_backend()
    loaded = None
    if model_path:   # a model that will not load fails here, before a folder is made
        from common.models import load_classifier
        from common.structured import flattened
        loaded = flattened(load_classifier(model_path))
        if check:
            check(loaded, model_path)
    digest = file_digest(model_path) if model_path else None
    meta = {**run_metadata(splits.source),
            **({"model": cli.shown_path(model_path)} if model_path else {})}
    run = Run(results_file, settings(digest, splits.data_id), args.output_dir, args.force,
              schema, meta)
    run.model = loaded
    return run, splits, model_path


def plot_only(results_file, args, plot, schema=None):
    """--plot-only: `plot(run, figures folder)` for every run stored in the
    repository's results file (or --output-dir's)."""
    root = args.output_dir or cli.REPO_ROOT
    store = ResultsStore(os.path.join(root, "results", results_file), schema)
    runs = store.runs()
    if not runs:
        raise ValueError(f"{store.path}: no results to plot; run without --plot-only first")
    figures = os.path.join(root, "figures")
    os.makedirs(figures, exist_ok=True)
    for i, run in enumerate(runs):
        plot(run, figures if i == 0 else figures_folder(figures, run["settings"]))
    return 0
