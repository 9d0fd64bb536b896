"""The results store and the run set-up: keyed runs, locks, kills, bad paths."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import part1_cnn
import part2_prune
import part3_tucker
from common import cli, runs
from common.data import load_for_run
from common.results import NUMBER, Map, ResultsStore, settings_label, write_json
from common.training import check_checkpoint
from tests.conftest import make_run, stored_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"part1": part1_cnn, "part2": part2_prune, "part3": part3_tucker}
FAST = ["--train-limit", "60", "--batch-size", "30", "--epochs", "1"]


def python(code, *args, cwd=REPO):
    """Run `code` in a fresh interpreter (a real process: real locks, real kills)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


# ---- the store ----------------------------------------------------------------

def test_runs_with_other_settings_are_kept_beside_each_other(tmp_path):
    store = ResultsStore(str(tmp_path / "part9.json"))
    store.update({"seed": 0}, lambda run: run.update(rows={"a": 1}))
    store.update({"seed": 1}, lambda run: run.update(rows={"a": 2}))
    store.update({"seed": 0}, lambda run: run["rows"].update(b=3))
    assert [run["settings"] for run in store.runs()] == [{"seed": 0}, {"seed": 1}]
    assert store.find({"seed": 0})["rows"] == {"a": 1, "b": 3}
    assert store.find({"seed": 1})["rows"] == {"a": 2}


def test_two_backups_in_one_second_both_survive(tmp_path):
    store = ResultsStore(str(tmp_path / "part9.json"))
    store.update({"seed": 0}, lambda run: run.update(value=1))
    first = store.backup()
    store.update({"seed": 0}, lambda run: run.update(value=2))
    second = store.backup()
    assert first != second
    assert [json.load(open(p))["runs"][0]["value"] for p in (first, second)] == [1, 2]


SCHEMA = {"models": [{"name": str, "test_accuracy": NUMBER, "latency?": Map(NUMBER)}]}
GOOD_ROW = {"name": "a", "test_accuracy": 0.5, "latency": {"1": 0.1}}


@pytest.mark.parametrize("row, where", [
    ({"test_accuracy": 0.5}, "runs[0].models[1]: missing 'name'"),
    ({**GOOD_ROW, "test_accuracy": None}, "runs[0].models[1].test_accuracy: expected"),
    ({**GOOD_ROW, "test_accuracy": True}, "runs[0].models[1].test_accuracy: expected"),
    ({**GOOD_ROW, "latency": "fast"}, "runs[0].models[1].latency: expected an object"),
    ({**GOOD_ROW, "latency": {"1": "0.1"}}, "runs[0].models[1].latency.1: expected"),
])
def test_a_damaged_row_is_named_before_anything_is_written(tmp_path, row, where):
    path = tmp_path / "part9.json"
    write_json(str(path), {"runs": [{"settings": {}, "models": [GOOD_ROW, row]}]})
    before = path.read_bytes()
    with pytest.raises(ValueError) as info:
        ResultsStore(str(path), SCHEMA)
    assert str(info.value).startswith(f"{path}: damaged: {where}")
    assert "\n" not in str(info.value) and path.read_bytes() == before


def test_deeply_nested_or_huge_files_are_refused_in_one_line(tmp_path, monkeypatch):
    deep = tmp_path / "part9.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        ResultsStore(str(deep))
    monkeypatch.setattr("common.results.MAX_BYTES", 10)
    big = tmp_path / "part8.json"
    write_json(str(big), {"runs": []})
    with pytest.raises(ValueError, match="not a results file"):
        ResultsStore(str(big))


# ---- where a run writes ------------------------------------------------------------

@pytest.fixture
def repository(tmp_path, monkeypatch):
    """A repository folder with one committed run of part9.json."""
    monkeypatch.setattr(cli, "REPO_ROOT", str(tmp_path))
    (tmp_path / "results").mkdir()
    write_json(str(tmp_path / "results" / "part9.json"),
               {"runs": [{"settings": {"seed": 0}, "rows": [1]}]})
    return tmp_path


def test_the_committed_settings_write_to_the_repository_others_to_runs(repository, capsys):
    assert runs.default_root("part9.json", {"seed": 0}) == str(repository)
    other = runs.Run("part9.json", {"seed": 1})
    assert other.root == str(repository / "runs" / f"part9-{settings_label({'seed': 1})}")
    assert "writing to runs/part9-" in capsys.readouterr().out
    assert json.load(open(repository / "results" / "part9.json")) == {
        "runs": [{"settings": {"seed": 0}, "rows": [1]}]}
    again = runs.Run("part9.json", {"seed": 1})   # the same command finds its folder
    assert again.root == other.root and again.stored["settings"] == {"seed": 1}


def test_a_changed_model_file_is_said_and_not_reused(tmp_path, capsys):
    run = runs.Run("part9.json", {"seed": 0}, output_dir=str(tmp_path))
    import keras
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    row = {"k": 1, **run.save_model(model, "m")}
    assert run.verified(row, "k=1") == str(tmp_path / "models" / "m.keras")
    with open(tmp_path / "models" / "m.keras", "ab") as f:
        f.write(b"\0")
    assert run.verified(row, "k=1") is None
    assert "has changed since its row was stored" in capsys.readouterr().out
    os.remove(tmp_path / "models" / "m.keras")
    assert run.verified(row, "k=1") is None
    assert "m.keras is not there" in capsys.readouterr().out


def test_a_replaced_row_is_kept_in_a_backup_and_an_added_key_is_not(tmp_path):
    run = runs.Run("part9.json", {"seed": 0}, output_dir=str(tmp_path))
    run.upsert("rows", "k", {"k": 1, "a": 1})
    run.upsert("rows", "k", {"k": 1, "a": 1, "b": 2})      # only adds: no backup
    assert not list((tmp_path / "results").glob("*.backup-*"))
    run.upsert("rows", "k", {"k": 1, "a": 3})
    (backup,) = (tmp_path / "results").glob("part9.backup-*.json")
    assert json.load(open(backup))["runs"][0]["rows"] == [{"k": 1, "a": 1, "b": 2}]


def test_a_timing_of_another_machine_is_kept_beside_and_not_reused(tmp_path, monkeypatch):
    from common import machine
    run = runs.Run("part9.json", {"seed": 0}, output_dir=str(tmp_path))
    measured = []

    def measure():
        measured.append(1)
        return {"models": {"original": {"median": 1.0, "min": 1.0, "max": 1.0, "ratio": 1.0}}}
    run.timing("timings", {"original": "abc"}, {"images": 10}, measure)
    run.timing("timings", {"original": "abc"}, {"images": 10}, measure)
    assert len(measured) == 1                                  # same machine: reused
    here = machine.identity()
    monkeypatch.setattr(machine, "identity", lambda *a: {**here, "cpu": "Other CPU"})
    run.timing("timings", {"original": "abc"}, {"images": 10}, measure)
    assert len(measured) == 2                                  # another machine: measured
    blocks = run.find()["timings"]
    assert [b["machine"]["cpu"] for b in blocks] == [here["cpu"], "Other CPU"]
    run.timing("timings", {"original": "abc"}, {"images": 20}, measure)  # other parameters
    assert len(measured) == 3 and len(run.find()["timings"]) == 3


def test_a_timing_of_fewer_models_reuses_or_keeps_the_timing_of_more(tmp_path):
    run = runs.Run("part9.json", {"seed": 0}, output_dir=str(tmp_path))
    measured = []

    def measure(names):
        measured.append(names)
        return {"models": {n: {"median": 1.0, "min": 1.0, "max": 1.0, "ratio": 1.0}
                           for n in names}}
    everything = ["original", "k1", "k4"]
    run.timing("timings", {"original": "a", "k1": "b", "k4": "c"}, {},
               lambda: measure(everything))
    block = run.timing("timings", {"original": "a", "k4": "c"}, {}, lambda: measure(["k4"]))
    assert measured == [everything] and set(block["digests"]) == set(everything)
    run.timing("timings", {"original": "a", "k4": "changed"}, {},
               lambda: measure(["original", "k4"]))
    assert len(measured) == 2                      # a new model: measured, the old kept
    assert [set(b["digests"]) for b in run.find()["timings"]] == [
        {"original", "k1", "k4"}, {"original", "k4"}]


def test_backup_keeps_the_file_as_it_was(tmp_path):
    store = ResultsStore(str(tmp_path / "part9.json"))
    store.update({"seed": 0}, lambda run: run.update(value=1))
    backup = store.backup()
    store.update({"seed": 0}, lambda run: run.update(value=2))
    assert json.load(open(backup))["runs"][0]["value"] == 1
    assert store.find({"seed": 0})["value"] == 2


@pytest.mark.parametrize("content", [b"[]", b"null", b"{}", b'{"runs": [1]}', b"\xff\xfe{",
                                     b'{"runs": '])
def test_a_file_of_the_wrong_shape_is_named(tmp_path, content):
    path = tmp_path / "part9.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="part9.json: "):
        ResultsStore(str(path))


def test_a_folder_in_place_of_the_file_is_named(tmp_path):
    (tmp_path / "part9.json").mkdir()
    with pytest.raises(ValueError, match="part9.json: is a folder"):
        ResultsStore(str(tmp_path / "part9.json"))


def test_two_processes_updating_one_file_keep_every_row(tmp_path):
    writer = """
        import os, sys, time
        from common.results import ResultsStore
        store = ResultsStore(sys.argv[1])
        while not os.path.exists(sys.argv[1] + ".go"):  # both start writing together
            time.sleep(0.001)
        for i in range(200):
            store.update({"seed": 0}, lambda run: run.setdefault("rows", {}).update(
                {f"{sys.argv[2]}{i}": i}))
    """
    path = str(tmp_path / "part9.json")
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(writer), path, name],
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
             for name in ("a", "b")]
    time.sleep(1)
    open(path + ".go", "w").close()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = ResultsStore(path).find({"seed": 0})["rows"]
    assert len(rows) == 400  # without the lock, one writer's rows overwrite the other's


# ---- part scripts: concurrent runs, other settings, --force -------------------------

def test_two_part1_runs_into_one_folder_keep_both_experiments(tiny_cifar, tmp_path):
    procs = [subprocess.Popen([sys.executable, "part1_cnn.py", "--data-dir", tiny_cifar[0],
                               "--output-dir", str(tmp_path), "--experiments", name, *FAST],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for name in ("baseline", "lr1")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    run = stored_run(tmp_path, "part1")
    assert {n for n, e in run["experiments"].items() if e["complete"]} == {"baseline", "lr1"}


def test_other_settings_are_stored_beside_and_drawn_apart(tiny_cifar, tmp_path):
    out = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--experiments",
           "baseline"]
    assert cli.run_main(part1_cnn.main, out + FAST) == 0
    first = stored_run(tmp_path, "part1")
    assert cli.run_main(part1_cnn.main, out + FAST[2:] + ["--train-limit", "40"]) == 0
    assert stored_run(tmp_path, "part1") == first  # the first run is untouched
    second = stored_run(tmp_path, "part1", index=1)
    assert second["settings"]["train_limit"] == 40
    figures = tmp_path / "figures" / f"run-{settings_label(second['settings'])}"
    assert (figures / "part1_step4_baseline.png").exists()


def test_force_keeps_a_backup(tiny_cifar, tmp_path, capsys):
    out = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--experiments", "lr1"]
    assert cli.run_main(part1_cnn.main, out + FAST) == 0
    before = stored_run(tmp_path, "part1")
    assert cli.run_main(part1_cnn.main, out + FAST + ["--force"]) == 0
    (backup,) = (tmp_path / "results").glob("part1.backup-*.json")
    assert json.load(open(backup))["runs"][0] == before
    assert backup.name in capsys.readouterr().out


def test_a_stored_experiment_of_another_configuration_is_refused(tiny_cifar, tmp_path,
                                                                 monkeypatch, capsys):
    out = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--experiments", "lr1"]
    assert cli.run_main(part1_cnn.main, out + FAST) == 0
    monkeypatch.setitem(part1_cnn.EXPERIMENTS, "lr1",
                        dict(part1_cnn.EXPERIMENTS["lr1"], learning_rate=0.5))
    capsys.readouterr()
    assert cli.run_main(part1_cnn.main, out + FAST) == 2
    err = capsys.readouterr().err.strip()
    assert "lr1 stored with another configuration" in err
    assert "--force" in err and "--output-dir" in err
    assert len(err.splitlines()) == 1


def test_part2_and_part3_use_the_repository_model_when_the_folder_has_none(tmp_path):
    assert cli.model_path(None, str(tmp_path)) == os.path.join(REPO, "models",
                                                               "reference.keras")
    own = tmp_path / "models" / "reference.keras"
    own.parent.mkdir()
    own.write_bytes(b"")
    assert cli.model_path(None, str(tmp_path)) == str(own)


# ---- kills: a SIGKILL while the checkpoint is written, then the same command ----------

KILL_DURING_SECOND_CHECKPOINT = """
    import os, signal, sys
    import keras
    import part1_cnn
    from common import cli
    real_save = keras.Model.save_weights
    calls = []

    def torn_save(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) < 2:
            return real_save(self, filepath, *args, **kwargs)
        real_save(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:       # the kill lands halfway through the write
            f.truncate(os.path.getsize(filepath) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    keras.Model.save_weights = torn_save
    sys.exit(cli.run_main(part1_cnn.main, sys.argv[1:]))
"""


def test_sigkill_during_a_checkpoint_write_then_the_same_command_resumes(tiny_cifar, tmp_path):
    args = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--experiments",
            "maxpool", "--train-limit", "60", "--batch-size", "30", "--epochs", "3"]
    killed = python(KILL_DURING_SECOND_CHECKPOINT, *args)
    assert killed.returncode == -9, killed.stderr
    assert [e["epoch"] for e in stored_run(tmp_path, "part1")["experiments"]["maxpool"]
            ["epochs"]] == [1, 2]
    again = subprocess.run([sys.executable, "part1_cnn.py", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "last checkpoint damaged" in again.stdout and "resuming" in again.stdout
    entry = stored_run(tmp_path, "part1")["experiments"]["maxpool"]
    assert [e["epoch"] for e in entry["epochs"]] == [1, 2, 3] and entry["complete"]


def test_a_checkpoint_with_a_torn_metadata_file_falls_back(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save_weights(str(tmp_path / "latest.weights.h5"))
    (tmp_path / "latest.weights.h5.bkp").write_bytes((tmp_path / "latest.weights.h5").read_bytes())
    (tmp_path / "training_metadata.json").write_text('{"epoch": ')
    (tmp_path / "training_metadata.json.bkp").write_text('{"epoch": 1, "batch": 0}')
    check_checkpoint(str(tmp_path))
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 1


def test_a_weights_file_torn_after_its_first_array_is_detected(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(400),
                              keras.layers.Dense(300)])
    weights = tmp_path / "latest.weights.h5"
    model.save_weights(str(weights))
    (tmp_path / "training_metadata.json").write_text('{"epoch": 2}')
    whole = weights.read_bytes()
    weights.write_bytes(whole[:len(whole) * 3 // 4])  # the last array cut short
    (tmp_path / "latest.weights.h5.bkp").write_bytes(b"")  # and no usable one before
    (tmp_path / "training_metadata.json.bkp").write_text('{"epoch": 1}')
    with pytest.raises(ValueError, match="damaged checkpoint"):
        check_checkpoint(str(tmp_path))


def test_a_torn_first_checkpoint_starts_again(tmp_path, capsys):
    (tmp_path / "latest.weights.h5").write_bytes(b"\x89HDF")
    (tmp_path / "training_metadata.json").write_text('{"epoch": 1}')
    check_checkpoint(str(tmp_path))
    assert not tmp_path.exists() and "starting again from epoch 1" in capsys.readouterr().out


def test_a_checkpoint_that_cannot_be_used_is_named_in_one_line(tiny_cifar, tmp_path, capsys):
    args = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--experiments",
            "lr1", *FAST]
    settings = part1_cnn.run_settings(part1_cnn.parse_args(args),
                                      load_for_run(tiny_cifar[0], validation=False).data_id)
    folder = tmp_path / "checkpoints" / f"part1_lr1-{settings_label(settings)}"
    folder.mkdir(parents=True)
    for suffix in ("", ".bkp"):  # both the last checkpoint and the one before torn
        (folder / f"latest.weights.h5{suffix}").write_bytes(b"")
        (folder / f"training_metadata.json{suffix}").write_text('{"epoch": 1}')
    results = tmp_path / "results"
    results.mkdir()
    write_json(str(results / "part1.json"), {"runs": [{"settings": settings, "experiments": {
        "lr1": {"config": part1_cnn.experiment_config("lr1", part1_cnn.parse_args(args)),
                "epochs": [], "complete": False}}}]})
    assert cli.run_main(part1_cnn.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{folder}: damaged checkpoint" in err and len(err.splitlines()) == 1


# ---- bad paths: exit 2, one line naming the path, before any training -----------------

def one_line_error(script, argv, capsys):
    assert cli.run_main(SCRIPTS[script].main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("script", SCRIPTS)
def test_output_dir_that_is_a_file_or_under_proc(script, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "not a folder" in one_line_error(script, ["--output-dir", str(a_file)], capsys)
    assert "/proc/none" in one_line_error(script, ["--output-dir", "/proc/none"], capsys)


def test_read_only_results_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    os.chmod(tmp_path / "results", 0o500)
    if os.access(tmp_path / "results", os.W_OK):  # root writes anyway: refuse as the OS would
        real = cli.tempfile.TemporaryFile

        def read_only(*args, dir=None, **kwargs):
            if dir == str(tmp_path / "results"):
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)
        monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)
    err = one_line_error("part1", ["--output-dir", str(tmp_path)], capsys)
    assert "results cannot be written (Permission denied)" in err


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("content", [b"[]", b"null", b"{}", b"\xff{", "folder"])
def test_a_bad_results_file_fails_before_anything_runs(script, content, tmp_path, capsys):
    path = tmp_path / "results" / f"{script}.json"
    path.parent.mkdir()
    path.mkdir() if content == "folder" else path.write_bytes(content)
    for extra in ([], ["--plot-only"]):  # --plot-only on {} too: never a silent exit 0
        assert str(path) in one_line_error(script, ["--output-dir", str(tmp_path), *extra],
                                           capsys)


def test_an_unreadable_part3_file_only_skips_the_tradeoff_figure(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    write_json(str(tmp_path / "results" / "part2.json"), {"runs": [
        {"settings": {"model_sha256": "m", "data_sha256": "d", "validation_sha256": "v"},
         "global": {"sparsity": [0.5], "validation_accuracy": [0.5],
                    "validation_accuracy_recalibrated": [0.5], "nonzero_params": [10]}}]})
    (tmp_path / "results" / "part3.json").write_text("[")
    assert cli.run_main(part2_prune.main, ["--plot-only", "--output-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("warning: ") and "part3.json" in err and len(err.splitlines()) == 1
    assert "compression_tradeoff" not in out  # said once, in the warning


# ---- start-up noise ------------------------------------------------------------------

def test_a_missing_model_is_one_line_before_tensorflow_is_imported(tmp_path):
    check = python("""
        import sys
        import part3_tucker
        from common import cli
        code = cli.run_main(part3_tucker.main, sys.argv[1:])
        print("tensorflow" in sys.modules, code)
    """, "--model", str(tmp_path / "none.keras"), "--output-dir", str(tmp_path))
    assert check.stdout.split() == ["False", "2"]
    assert check.stderr.strip().endswith("none.keras: model file not found")
    assert len(check.stderr.strip().splitlines()) == 1


def test_loading_the_backend_prints_nothing():
    check = python("from common import cli; cli.load_backend(); print('ok')")
    assert check.returncode == 0 and check.stdout == "ok\n"
    assert check.stderr == ""


def test_a_sweep_in_a_log_counts_its_items(capsys):
    sweep = cli.Sweep(2, "global sweep", skipped=1)
    sweep.done("0.50: 0.89")
    sweep.done("0.90: 0.38")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "global sweep: 1 of 3 done already, skipped"
    assert lines[1].startswith("[global sweep 1/2, ETA ") and lines[1].endswith("] 0.50: 0.89")
    assert lines[2].startswith("[global sweep 2/2, ETA 0.0 min]")


def test_a_long_item_of_a_sweep_is_never_silent(capsys, monkeypatch):
    import time
    monkeypatch.setattr(cli, "HEARTBEAT", 0.2)
    sweep = cli.Sweep(2, "k")
    time.sleep(0.5)                       # item 1 runs: two beats, no ETA yet
    sweep.done("k=1")
    time.sleep(0.3)                       # item 2: one beat, with an ETA
    sweep.done("k=2")
    time.sleep(0.5)                       # all done: silence
    lines = capsys.readouterr().out.splitlines()
    beats = [line for line in lines if "running for" in line]
    assert [b.split("]")[0] for b in beats[:2]] == ["[k 1/2", "[k 1/2"]
    assert beats[-1].startswith("[k 2/2, ETA ") and len(beats) in (3, 4)
    assert lines[-1].startswith("[k 2/2, ETA 0.0 min] k=2")


def test_a_heartbeat_speaks_while_its_block_runs_and_stops_after(capsys, monkeypatch):
    import time
    monkeypatch.setattr(cli, "HEARTBEAT", 0.2)
    with cli.Heartbeat("converting"):
        time.sleep(0.5)
    time.sleep(0.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "converting ..." and len(lines) == 3
    assert all(line.startswith("converting: running for ") for line in lines[1:])


def test_runs_of_other_settings_in_one_folder_keep_each_others_models(tmp_path):
    import keras
    import numpy as np
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    first = make_run(tmp_path, epochs=3)
    first.upsert("rows", "k", {"k": 4, **first.save_model(model, "m")})
    model.set_weights([w + 1 for w in model.get_weights()])
    second = make_run(tmp_path, epochs=10)
    row = {"k": 4, **second.save_model(model, "m")}
    assert row["model"] == cli.shown_path(
        str(tmp_path / "models" / f"m-{settings_label(second.settings)}.keras"))
    assert first.verified(first.find()["rows"][0], "k=4") == str(tmp_path / "models" / "m.keras")
    assert second.model_file("m", ".tflite").endswith(f"m-{second.label}.tflite")
    assert make_run(tmp_path, epochs=3).model_file("m") == str(tmp_path / "models" / "m.keras")
    np.testing.assert_allclose(keras.saving.load_model(runs.resolve(row["model"])).get_weights()[1],
                               model.get_weights()[1])
