"""Magnitude pruning: exact counts, which weights, restoring, masks through fit."""

import keras
import numpy as np
import pytest

import part2_prune
from common import cli, plots_compression, pruning
from common.results import file_digest, write_json
from tests.conftest import argparse_error, make_run, stored_run, tiny_classifier, tiny_splits


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 0.9, 0.99])
def test_number_of_zeros_is_round_rate_times_size(rate):
    kernel = np.random.default_rng(0).normal(size=(3, 3, 5, 7))
    mask = pruning.magnitude_mask(kernel, rate)
    assert np.count_nonzero(~mask) == round(rate * kernel.size)


def test_pruned_weights_are_the_smallest_magnitudes():
    kernel = np.random.default_rng(1).normal(size=(4, 50))
    mask = pruning.magnitude_mask(kernel, 0.3)
    assert np.abs(kernel[~mask]).max() <= np.abs(kernel[mask]).min()


def test_ties_are_broken_by_position():
    kernel = np.array([0.5, -0.1, 0.1, 0.1, 2.0, -0.1])
    # Four entries tie at |w| = 0.1; pruning 3 takes the first three of them.
    np.testing.assert_array_equal(pruning.magnitude_mask(kernel, 0.5),
                                  [True, False, False, False, True, True])


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval_is_refused(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pruning.magnitude_mask(np.ones(4), rate)


def test_global_threshold_on_a_hand_made_example():
    kernels = {"a": np.array([[0.1, -5.0], [0.3, 0.2]]), "b": np.array([4.0, -0.05, 1.0, 0.25])}
    masks = pruning.global_masks(kernels, 0.5)  # 8 weights: prune the 4 smallest overall
    # |w| sorted: 0.05 (b), 0.1 (a), 0.2 (a), 0.25 (b) | 0.3 (a), 1, 4, 5
    np.testing.assert_array_equal(masks["a"], [[False, True], [True, False]])
    np.testing.assert_array_equal(masks["b"], [True, False, True, False])
    uniform = pruning.uniform_masks(kernels, 0.5)
    assert all(np.count_nonzero(~m) == m.size // 2 for m in uniform.values())


def test_pruning_one_layer_leaves_the_rest_and_restores_bit_exactly():
    model = tiny_classifier()
    before = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}
    kernel = pruning.kernels_of(model, {"conv3"})["conv3"]
    with pruning.pruned(model, {"conv3": pruning.magnitude_mask(kernel, 0.7)}):
        for w in model.weights:
            value = keras.ops.convert_to_numpy(w)
            if w.path == model.get_layer("conv3").kernel.path:
                assert np.count_nonzero(value == 0) == round(0.7 * value.size)
            else:  # other kernels and every bias untouched
                np.testing.assert_array_equal(value, before[w.path])
    for w in model.weights:
        assert keras.ops.convert_to_numpy(w).tobytes() == before[w.path].tobytes()


def test_masks_survive_fit():
    model = tiny_classifier()
    masks = pruning.global_masks(pruning.kernels_of(model), 0.8)
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), "categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(32, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 32)]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[pruning.KeepPruned(masks)])
    kernels = pruning.kernels_of(model)
    for name, mask in masks.items():
        assert np.all(kernels[name][~mask] == 0)
        assert np.any(kernels[name][mask] != 0)
    assert pruning.sparsity(model) >= 0.8 - 1e-3


def test_masks_survive_fine_tuning_with_lookahead():
    """fine_tune averages the weights (lookahead) in its second epoch: the
    pruned weights must still come out exactly zero."""
    from common.finetune import fine_tune
    model = tiny_classifier()
    masks = pruning.global_masks(pruning.kernels_of(model), 0.8)
    pruning.apply_masks(model, masks)
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(40, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 40)]
    before = pruning.kernels_of(model)
    fine_tune(model, (x, y), (x, y), epochs=2, batch_size=8, peak_learning_rate=0.5,
              callbacks=[pruning.KeepPruned(masks)], verbose=0)
    kernels = pruning.kernels_of(model)
    for name, mask in masks.items():
        assert np.all(kernels[name][~mask] == 0)
        assert not np.array_equal(kernels[name][mask], before[name][mask])  # it trained


def test_gradual_schedule_is_cubic_from_initial_to_final():
    schedule = pruning.GradualPruning(["conv1"], final_sparsity=0.9, ramp_steps=10,
                                      initial_sparsity=0.5)
    # 0.9 - 0.4 * (1 - t)**3 at t = 0, 0.5, 1 and past the ramp
    assert schedule.sparsity_at(0) == pytest.approx(0.5)
    assert schedule.sparsity_at(5) == pytest.approx(0.9 - 0.4 / 8)
    assert schedule.sparsity_at(10) == pytest.approx(0.9)
    assert schedule.sparsity_at(25) == pytest.approx(0.9)


@pytest.mark.parametrize("kwargs", [dict(final_sparsity=1.0, ramp_steps=4),
                                    dict(final_sparsity=0.5, ramp_steps=4, initial_sparsity=0.6),
                                    dict(final_sparsity=0.5, ramp_steps=4, every=0)])
def test_gradual_pruning_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        pruning.GradualPruning(["conv1"], **kwargs)


def test_gradual_pruning_only_ever_adds_zeros_and_ends_at_the_final_sparsity():
    model = tiny_classifier()
    names = ["conv1", "conv3", "head"]  # conv2 is left dense
    dense_conv2 = pruning.kernels_of(model, {"conv2"})["conv2"]
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy")
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(48, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 48)]
    zeros_after_step = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: (
        zeros_after_step.append({n: k == 0 for n, k in pruning.kernels_of(model, names).items()})))
    # 6 steps an epoch, 3 epochs: the ramp (8 steps, masks every 3) ends in epoch 2
    schedule = pruning.GradualPruning(names, final_sparsity=0.8, ramp_steps=8,
                                      initial_sparsity=0.3, every=3)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[schedule, record])
    total = sum(zeros_after_step[0][n].size for n in names)
    counts = [sum(int(z[n].sum()) for n in names) for z in zeros_after_step]
    # steps 1..18; masks chosen at 0 (0.3), 3, 6 and 8 (0.8), then fixed
    assert counts[0] == round(0.3 * total)
    assert counts[2] == round(schedule.sparsity_at(3) * total)
    assert all(c == round(0.8 * total) for c in counts[7:])
    for earlier, later in zip(zeros_after_step, zeros_after_step[1:]):
        for n in names:
            assert np.all(later[n][earlier[n]])  # a pruned weight stays pruned
    np.testing.assert_array_equal(zeros_after_step[7]["conv1"], zeros_after_step[-1]["conv1"])
    assert not np.array_equal(pruning.kernels_of(model, {"conv2"})["conv2"], dense_conv2)
    assert np.all(pruning.kernels_of(model, {"conv2"})["conv2"] != 0)


def test_sparse_format_is_smaller_for_a_sparse_model():
    model = tiny_classifier()
    dense = pruning.sparse_bytes(model)
    pruning.apply_masks(model, pruning.global_masks(pruning.kernels_of(model), 0.9))
    assert pruning.sparse_bytes(model) < dense / 3


# ---- the script --------------------------------------------------------------

def test_pruned_accuracy_is_that_of_the_pruned_copy_and_leaves_every_weight_as_it_was():
    model, splits = tiny_classifier(), tiny_splits()
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    masks = pruning.global_masks(pruning.kernels_of(model), 0.8)
    copy = keras.models.clone_model(model)       # an independent pruned copy, by hand
    copy.set_weights(model.get_weights())
    pruning.apply_masks(copy, masks)
    expected = np.mean(copy.predict(splits.validation[0], verbose=0).argmax(1)
                       == splits.validation[1].argmax(1))
    accuracy, nonzero = pruning.pruned_accuracy(model, masks, splits.validation,
                                                splits.train[0])
    assert pruning.pruned_accuracy(model, masks, splits.validation)[0] == pytest.approx(expected)
    assert nonzero < 0.3 * model.count_params() and 0 <= accuracy <= 1
    for old, new in zip(before, model.weights):  # kernels and batch-norm statistics
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_sparsity_curve_resumes_after_its_last_measured_sparsity(tmp_path):
    model, splits = tiny_classifier(), tiny_splits()
    full = make_run(tmp_path / "full", sparsities=[0.5, 0.9], recalibration_images=20)
    part2_prune.sparsity_curve(full, model, "uniform", splits)
    curve = full.find()["uniform"]
    # As an interrupted run leaves it: 0.5 measured (with a marker value), 0.9 not.
    partial = {key: values[:1] for key, values in curve.items()}
    partial["sparsity"] = [0.5, 0.9]
    partial["validation_accuracy"] = [-1.0]
    resumed = make_run(tmp_path / "resumed", sparsities=[0.5, 0.9], recalibration_images=20)
    resumed.update(lambda r: r.update(uniform=partial))
    part2_prune.sparsity_curve(resumed, model, "uniform", splits)
    assert resumed.find()["uniform"]["validation_accuracy"] == [
        -1.0, curve["validation_accuracy"][1]]
    assert resumed.find()["uniform"]["nonzero_params"] == curve["nonzero_params"]


def run(argv):
    return cli.run_main(part2_prune.main, argv)


@pytest.mark.parametrize("argv, message", [
    (["--rates", "1.0"], "rate must be in [0, 1)"),
    (["--rates", "-0.2"], "rate must be in [0, 1)"),
    (["--rates", "half"], "rate must be a number"),
    (["--fine-tune-epochs", "x"], "is not an integer"),
])
def test_bad_cli_values_exit_2(argv, message, capsys):
    assert message in argparse_error(part2_prune.main, argv, capsys)


def test_unknown_layer_and_missing_model_exit_2(tmp_path, tiny_cifar, tiny_model_file,
                                                no_repo_model, capsys):
    out = ["--output-dir", str(tmp_path), "--data-dir", tiny_cifar[0]]
    assert run(out + ["--model", tiny_model_file, "--layers", "conv9"]) == 2
    assert "no Conv2D or Dense layer named conv9" in capsys.readouterr().err
    assert run(out) == 2
    assert "part1_cnn.py --experiments reference" in capsys.readouterr().err


def test_tiny_end_to_end_run(tiny_cifar, tiny_model_file, tmp_path, capsys, sealed_test_set):
    sealed_test_set(part2_prune)
    out = str(tmp_path)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", out, "--model", tiny_model_file,
            "--rates", "0", "0.5", "--layers", "conv2", "head", "--fine-tune-epochs", "1",
            "--sparsities", "0.5", "0.9", "--fine-tune-sparsities", "0.9",
            "--train-limit", "40", "--batch-size", "20", "--precision", "float32"]
    assert run(argv) == 0
    results = stored_run(out, "part2")
    assert set(results["layer_sensitivity"]) == {"conv2", "head"}
    assert results["layer_sensitivity"]["conv2"]["index"] == 2
    assert results["layer_sensitivity"]["head"]["validation_accuracy"][0] == pytest.approx(
        results["dense"]["validation_accuracy"])
    assert results["global"]["sparsity"] == results["settings"]["sparsities"] == [0.5, 0.9]
    assert len(results["global"]["validation_accuracy_recalibrated"]) == 2
    (row,) = results["finetune"]
    assert row["measured_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert {"validation_accuracy_recalibrated", "validation_accuracy_refitted",
            "test_accuracy"} <= set(row)
    assert results["settings"]["fine_tune"]["precision"] == "float32"
    assert sealed_test_set.state["reads"] == 2   # the dense model and the 90% one
    assert row["sparse_bytes"] < results["dense"]["sizes"]["sparse_bytes"]
    model_file = tmp_path / "models" / "pruned_90.keras"
    assert row["model_sha256"] == file_digest(str(model_file))
    assert [p.name for p in model_file.parent.iterdir()] == ["pruned_90.keras"]  # no dense copy
    for name in ("layer_sensitivity", "global_vs_uniform", "finetune"):
        assert (tmp_path / "figures" / f"part2_{name}.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "figures" / "part2_finetune.png").unlink()
    assert run(["--plot-only", "--output-dir", out]) == 0
    assert (tmp_path / "figures" / "part2_finetune.png").exists()

    # A stored row whose model file is gone is made again.
    model_file.unlink()
    capsys.readouterr()
    assert run(argv) == 0
    assert "pruned_90.keras is not there; making it again" in capsys.readouterr().out
    (row,) = stored_run(out, "part2")["finetune"]
    assert row["model_sha256"] == file_digest(str(model_file))
    assert run(argv) == 0 and "90% done, reusing" in capsys.readouterr().out

    # The trade-off figure needs Part 3 results of the same model, data and split.
    part3 = {"settings": dict(results["settings"], model_sha256="another model"),
             "sweep": [{"k": 4, "params": 100, "validation_accuracy": 0.5,
                        "validation_accuracy_recalibrated": 0.55,
                        "validation_accuracy_fine_tuned": 0.6}]}
    tradeoff = tmp_path / "figures" / "compression_tradeoff.png"
    write_json(str(tmp_path / "results" / "part3.json"), {"runs": [part3]})
    assert run(["--plot-only", "--output-dir", out]) == 0
    assert not tradeoff.exists()
    part3["settings"] = results["settings"]
    write_json(str(tmp_path / "results" / "part3.json"), {"runs": [part3]})
    assert run(["--plot-only", "--output-dir", out]) == 0
    assert tradeoff.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("values", [["0.5", "0.5000001"], ["0"], ["1"]])
def test_fine_tune_sparsities_that_would_share_a_file_or_make_no_sense_exit_2(values, capsys):
    err = argparse_error(part2_prune.main, ["--fine-tune-sparsities", *values], capsys)
    assert "name the same model" in err or "in (0, 1)" in err


# ---- least-squares refit of the kept weights ---------------------------------

@pytest.mark.parametrize("strides, padding", [(1, "same"), (2, "same"), (2, "valid"), (1, "valid")])
def test_conv_patches_times_kernel_is_the_conv(strides, padding):
    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(5, 3, strides=strides, padding=padding, use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 9, 8, 4)).astype("float32")
    expected = keras.ops.convert_to_numpy(conv(x))                   # Keras' own conv
    kernel = keras.ops.convert_to_numpy(conv.kernel).reshape(-1, 5)
    np.testing.assert_allclose(pruning.conv_patches(x, conv) @ kernel,
                               expected.reshape(-1, 5), rtol=1e-4, atol=1e-5)


def test_refit_of_a_dense_layer_is_the_least_squares_solution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, use_bias=False, name="d")])
    dense = pruning.kernels_of(model)
    masks = pruning.uniform_masks(dense, 0.5)
    pruning.apply_masks(model, masks)
    pruning.refit_kept_weights(model, masks, dense, x, damping=0.0)
    refitted = keras.ops.convert_to_numpy(model.layers[0].kernel)
    for j in range(3):   # numpy's lstsq on the kept inputs of output j
        keep = masks["d"][:, j]
        best = np.linalg.lstsq(x[:, keep], x @ dense["d"][:, j], rcond=None)[0]
        np.testing.assert_allclose(refitted[keep, j], best, rtol=1e-4, atol=1e-5)
        assert np.all(refitted[~keep, j] == 0)


def test_refit_brings_a_pruned_model_closer_to_the_dense_one():
    model = tiny_classifier()
    images = np.random.default_rng(0).uniform(size=(16, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    dense = pruning.kernels_of(model)
    masks = pruning.global_masks(dense, 0.8)
    pruning.apply_masks(model, masks)
    pruned_error = np.abs(model.predict(images, verbose=0) - expected).mean()
    pruning.refit_kept_weights(model, masks, dense, images)
    assert np.abs(model.predict(images, verbose=0) - expected).mean() < pruned_error / 2
    assert pruning.sparsity(model) == pytest.approx(0.8, abs=1e-3)  # zeros stay zeros


def test_refit_keeps_the_weight_of_a_dead_input():
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
    x[:, 0] = 0.0                                      # input 0 never fires
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, use_bias=False, name="d")])
    dense = pruning.kernels_of(model)
    masks = {"d": np.array([[True, True], [True, False], [False, True], [True, True]])}
    pruning.apply_masks(model, masks)
    pruning.refit_kept_weights(model, masks, dense, x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.layers[0].kernel)[0],
                               dense["d"][0], rtol=1e-6)


def test_many_layers_are_drawn_as_a_grid_of_layers_by_rates(tmp_path):
    rows = [{"index": i, "shape": [3, 3, 4, 4], "prune_rates": [0.0, 0.5, 0.9],
             "validation_accuracy": [0.8, 0.8 - i / 100, 0.5 - i / 100]} for i in range(1, 14)]
    rows[2] = dict(rows[2], prune_rates=[0.0, 0.9], validation_accuracy=[0.8, 0.1])
    rates, grid = plots_compression.sensitivity_grid(rows)
    assert rates == [0.0, 0.5, 0.9]
    np.testing.assert_allclose(grid[0], [0.8, 0.79, 0.49])
    np.testing.assert_allclose(grid[2], [0.8, np.nan, 0.1])
    results = {"layer_sensitivity": {f"conv{i}": row for i, row in enumerate(rows, 1)},
               "dense": {"validation_accuracy": 0.8}, "settings": {}}
    path = plots_compression.plot_layer_sensitivity(results, str(tmp_path / "grid.png"))
    assert open(path, "rb").read().startswith(b"\x89PNG")
