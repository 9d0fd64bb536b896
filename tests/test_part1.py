"""Part 1 end to end on tiny data: outputs, resuming, --plot-only, CLI errors."""

import json
import os

import keras
import numpy as np
import pytest

import part1_cnn
from common import cli
from tests.conftest import argparse_error, stored_run

FAST = ["--train-limit", "60", "--batch-size", "30"]


def run(argv):
    return cli.run_main(part1_cnn.main, argv)


def test_importing_the_scripts_runs_nothing(tmp_path):
    """Nor loads the backend: --help and a wrong option answer at once."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, part1_cnn, part2_prune, part2_structured, part3_tucker, "
            "part4_deploy, part5_budget, channel_coverage, fine_tune_recipe, "
            "precision_speed, train_throughput, tucker_speed, width_rounding; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    path = os.pathsep.join([repo, os.path.join(repo, "bench")])
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": path}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n" and done.stderr == ""   # no backend loaded, nothing said
    assert list(tmp_path.iterdir()) == []                  # nothing written


def test_the_reference_trains_without_the_validation_images_and_reads_test_once(
        tiny_cifar, tmp_path, monkeypatch, sealed_test_set):
    monkeypatch.setitem(part1_cnn.EXPERIMENTS, "reference",
                        dict(part1_cnn.EXPERIMENTS["reference"], widths=[8, 8, 8]))
    sealed_test_set(part1_cnn, "save_reference")
    fitted = []
    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, x, y, **kw: fitted.append(
        (len(x), len(kw["validation_data"][0]))) or real_fit(self, x, y, **kw))
    assert run(["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--epochs", "1",
                "--experiments", "reference", "--precision", "float32",
                "--batch-size", "30"]) == 0
    assert fitted == [(90, 10)]          # 100 training images: 90 to train, 10 held out
    entry = stored_run(tmp_path, "part1")["experiments"]["reference"]
    assert entry["config"]["validation"]["validation"] == "train[90:100]"
    assert entry["epochs"][0]["validation_accuracy"] is not None
    assert "test_accuracy" not in entry["epochs"][0]
    info = json.load(open(tmp_path / "models" / "reference.json"))
    assert {"validation_accuracy", "test_accuracy", "test_accuracy_flip_tta"} <= set(info)
    assert info["training_images"] == 90 and sealed_test_set.state["reads"] == 1


def test_a_cifar_resnet_trains_held_out_and_saves_a_float32_classifier(
        tiny_cifar, tmp_path, monkeypatch, sealed_test_set):
    """The quick form of `--experiments resnet56`: a ResNet-20 on tiny data."""
    sealed_test_set(part1_cnn, "save_reference")
    assert run(["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--epochs", "1",
                "--experiments", "resnet20", "--precision", "mixed_bfloat16",
                "--batch-size", "30"]) == 0
    entry = stored_run(tmp_path, "part1")["experiments"]["resnet20"]
    assert entry["complete"] and entry["config"]["depth"] == 20
    assert entry["config"]["validation"]["validation"] == "train[90:100]"
    info = json.load(open(tmp_path / "models" / "resnet20.json"))
    assert info["training_images"] == 90 and sealed_test_set.state["reads"] == 1
    assert keras.mixed_precision.global_policy().name == "float32"   # put back after training
    saved = keras.saving.load_model(tmp_path / "models" / "resnet20.keras", safe_mode=True)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert saved.count_params() == 274_042 and all(not layer.losses for layer in saved.layers)


def test_scratch_b_trains_a_pruned_architecture_from_fresh_weights(
        tiny_cifar, tmp_path, sealed_test_set):
    """--architecture: a ResNet-8 with channels removed, trained from scratch
    with the resnet recipe; saved float32 with the pruned widths, new weights."""
    from common import models, structured
    sealed_test_set(part1_cnn, "save_reference")
    keras.utils.set_random_seed(0)
    resnet = models.cifar_resnet(8, widths=(4, 8, 8))
    names = structured.prunable_convs(resnet)
    pruned = structured.remove_filters(resnet, structured.keep_indices(
        structured.l1_norms(resnet, names), {"stem_conv": 2, "stage2_block1_conv1": 3}))
    path = str(tmp_path / "pruned_8.keras")
    pruned.save(path)
    assert run(["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--epochs", "1",
                "--experiments", "resnet20", "--architecture", path, "--precision",
                "mixed_bfloat16", "--batch-size", "30"]) == 0
    entry = stored_run(tmp_path, "part1")["experiments"]["scratch-pruned_8"]
    assert entry["complete"] and entry["config"]["architecture_sha256"]
    saved = keras.saving.load_model(tmp_path / "models" / "scratch-pruned_8.keras")
    assert [w.shape for w in saved.weights] == [w.shape for w in pruned.weights]
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert all(not layer.losses for layer in saved.layers)          # no L2 left
    kernel = saved.get_layer("stage1_block1_conv1").kernel.numpy()
    assert kernel.shape[2] == 2 and not np.allclose(
        kernel, pruned.get_layer("stage1_block1_conv1").kernel.numpy())


def test_a_scratch_model_carries_the_recipe_s_weight_decay():
    from common import models
    model = models.reinitialized(models.cifar_resnet(8, widths=(4, 8, 8)), "float32", 1e-3)
    model(np.zeros((1, 32, 32, 3), "float32"))
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    expected = sum(1e-3 * float(np.sum(np.square(k.numpy()))) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("option, expected", [("float32", "float32"),
                                               ("mixed_bfloat16", "mixed_bfloat16")])
def test_precision_applies_to_the_reference_only(option, expected):
    args = part1_cnn.parse_args(["--precision", option])
    assert part1_cnn.experiment_config("reference", args)["precision"] == expected
    assert "precision" not in part1_cnn.experiment_config("baseline", args)  # float32


def test_tiny_run_writes_figure_json_and_model(tiny_cifar, tmp_path):
    out = str(tmp_path)
    assert run(["--data-dir", tiny_cifar[0], "--output-dir", out, "--epochs", "1",
                "--experiments", "baseline", *FAST]) == 0
    results = stored_run(out, "part1")
    entry = results["experiments"]["baseline"]
    assert entry["complete"] and entry["config"]["epochs"] == 1
    (record,) = entry["epochs"]
    assert set(record) == {"epoch", "train_accuracy", "train_loss", "test_accuracy",
                           "test_loss", "seconds"}
    assert 0 <= record["test_accuracy"] <= 1
    assert entry["final_test_accuracy"] == record["test_accuracy"]
    assert {"python", keras.backend.backend(), "keras", "data_source", "accelerator"} \
        <= set(results["meta"])
    png = (tmp_path / "figures" / "part1_step4_baseline.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    model = keras.saving.load_model(str(tmp_path / "models" / "part1_baseline.keras"))
    assert model.output_shape == (None, 10)


def test_finished_experiment_is_skipped_unless_forced(tiny_cifar, tmp_path, capsys):
    args = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--epochs", "1",
            "--experiments", "lr1", *FAST]
    assert run(args) == 0
    capsys.readouterr()
    assert run(args) == 0
    assert "skipped" in capsys.readouterr().out
    assert run(args + ["--force"]) == 0
    assert "skipped" not in capsys.readouterr().out


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_from_last_finished_epoch(tiny_cifar, tmp_path, monkeypatch):
    args = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--epochs", "3",
            "--experiments", "maxpool", *FAST]
    backup_end = keras.callbacks.BackupAndRestore.on_epoch_end

    def die_after_second_epoch(self, epoch, logs=None):
        backup_end(self, epoch, logs)
        if epoch == 1:
            raise Interrupt  # as if killed right after epoch 2 was backed up

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", die_after_second_epoch)
    with pytest.raises(Interrupt):
        part1_cnn.main(args)
    first = stored_run(tmp_path, "part1")["experiments"]["maxpool"]
    assert [e["epoch"] for e in first["epochs"]] == [1, 2] and not first["complete"]

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", backup_end)
    begun = []
    original_begin = keras.callbacks.BackupAndRestore.on_epoch_begin
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_begin",
                        lambda self, epoch, logs=None: begun.append(epoch)
                        or original_begin(self, epoch, logs))
    assert part1_cnn.main(args) == 0
    second = stored_run(tmp_path, "part1")["experiments"]["maxpool"]
    assert begun == [2]  # only the third epoch was trained again
    assert [e["epoch"] for e in second["epochs"]] == [1, 2, 3] and second["complete"]
    assert second["epochs"][:2] == first["epochs"]
    # the backup is removed once finished (its lock file stays)
    assert [p for p in os.listdir(tmp_path / "checkpoints") if not p.endswith(".lock")] == []


def test_plot_only_redraws_without_data(tiny_cifar, tmp_path):
    out = str(tmp_path)
    assert run(["--data-dir", tiny_cifar[0], "--output-dir", out, "--epochs", "1",
                "--experiments", "baseline", "lr0.1", "lr1", *FAST]) == 0
    figures = tmp_path / "figures"
    for png in figures.iterdir():
        png.unlink()
    # A data folder that does not exist: --plot-only must not need the data.
    assert run(["--plot-only", "--output-dir", out, "--data-dir", str(tmp_path / "none")]) == 0
    assert sorted(p.name for p in figures.iterdir()) == [
        "part1_step4_baseline.png", "part1_step5_learning_rates.png"]


def test_plot_only_without_results_exits_2(tmp_path, capsys):
    assert run(["--plot-only", "--output-dir", str(tmp_path)]) == 2
    assert "no results to plot" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "must be at least 1"),
    (["--epochs", "two"], "is not an integer"),
    (["--batch-size", "-3"], "must be at least 1"),
    (["--train-limit", "1.5"], "is not an integer"),
    (["--train-limit", "100000"], "'100000': CIFAR-10 has 50,000 training images"),
    (["--seed", "-1"], "must be at least 0"),
    (["--experiments", "resnet"], "invalid choice"),
    (["--experiments", "baseline", "--architecture", "README.md"], "a resnet experiment's"),
    (["--experiments", "resnet20", "--architecture", "nowhere.keras"], "no such file"),
    (["--precision", "float16"], "invalid choice"),
])
def test_bad_cli_values_exit_2_with_one_line(argv, message, capsys):
    assert message in argparse_error(part1_cnn.main, argv, capsys)


def test_bad_data_exits_2_with_one_line(tmp_path, capsys):
    assert run(["--data-dir", str(tmp_path), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CIFAR-10 found" in err and len(err.splitlines()) == 1


def test_ctrl_c_says_one_line_and_exits_130(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    assert cli.run_main(interrupted) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the same command resumes" in err


def test_same_seed_gives_the_same_numbers(tiny_cifar, tmp_path):
    def losses(seed):
        out = tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}"
        assert run(["--data-dir", tiny_cifar[0], "--output-dir", str(out), "--epochs", "2",
                    "--experiments", "maxpool", "--seed", str(seed), *FAST]) == 0
        epochs = stored_run(out, "part1")["experiments"]["maxpool"]["epochs"]
        return [(e["train_loss"], e["test_loss"]) for e in epochs]
    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_a_figure_half_run_says_what_it_needs_one_not_run_is_quiet(tiny_cifar, tmp_path, capsys):
    assert run(["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--epochs", "1",
                "--experiments", "maxpool", *FAST]) == 0
    capsys.readouterr()
    assert run(["--plot-only", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("part1_step6_maxpool.png not drawn: it needs baseline and maxpool "
            "(run --experiments baseline)") in out
    assert "part1_step7" not in out  # none of its experiments run: not asked for
    assert not (tmp_path / "figures" / "part1_step6_maxpool.png").exists()
