"""Tucker-2 surgery checked against plain convolutions and numpy's SVD."""

import os

import keras
import numpy as np
import pytest
from keras import layers

import part3_tucker
from common import cli, tucker
from common.results import file_digest
from tests.conftest import argparse_error, stored_run, tiny_classifier


def ranks_for(k):
    return lambda c, f: tucker.tucker_ranks(c, f, k)


@pytest.mark.parametrize("c, f, k, expected", [
    (64, 128, 4, (32, 64)), (64, 64, 8, (64, 64)), (3, 10, 1, (1, 2)), (192, 192, 3, (72, 72)),
])
def test_rank_formula(c, f, k, expected):
    assert tucker.tucker_ranks(c, f, k) == expected


@pytest.mark.parametrize("k", [0, 9, 2.5, "4"])
def test_rank_formula_rejects_bad_k(k):
    with pytest.raises(ValueError, match="1..8"):
        tucker.tucker_ranks(16, 16, k)


def test_full_rank_model_matches_original():
    model = tiny_classifier()
    bn = model.get_layer("bn2")  # non-trivial statistics, so BN is really exercised
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 16), rng.normal(size=16),
                    rng.normal(size=16), rng.uniform(0.5, 2, 16)])
    decomposed, ranks = tucker.decompose_model(model, ranks_for(8))
    assert ranks == {"conv2": [8, 16], "conv3": [16, 32]}  # conv1 (c = 3) stays
    x = rng.uniform(size=(8, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(decomposed.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4)
    names = [layer.name for layer in decomposed.layers]
    assert "conv2" not in names and "conv2_tucker_core" in names and "bn2" in names


def test_decomposition_leaves_the_original_alone_and_shares_no_weights():
    model = tiny_classifier()
    before = [w.copy() for w in model.get_weights()]
    decomposed, _ = tucker.decompose_model(model, ranks_for(2))
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    ids = {id(v) for v in model.weights}
    assert not ids & {id(v) for v in decomposed.weights}


def test_sequential_model_is_rebuilt_as_sequential():
    model = keras.Sequential([keras.Input((12, 12, 3)), layers.Conv2D(6, 3, name="a"),
                              layers.Conv2D(10, 3, activation="relu", name="b"),
                              layers.Flatten(), layers.Dense(4)])
    decomposed, ranks = tucker.decompose_model(model, ranks_for(8))
    assert isinstance(decomposed, keras.Sequential) and list(ranks) == ["b"]
    x = np.random.default_rng(1).uniform(size=(3, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(decomposed(x), model(x), atol=1e-4)


@pytest.mark.parametrize("strides, padding, use_bias, activation", [
    (2, "valid", False, None), (1, "same", True, "relu"), (2, "same", True, "tanh"),
])
def test_decomposed_conv_equals_conv_with_reconstructed_kernel(strides, padding, use_bias,
                                                               activation):
    rng = np.random.default_rng(2)
    conv = layers.Conv2D(12, 3, strides=strides, padding=padding, use_bias=use_bias,
                         activation=activation)
    conv.build((None, 9, 9, 8))
    conv.set_weights([rng.normal(size=(3, 3, 8, 12))] + ([rng.normal(size=12)] if use_bias else []))
    first, core, last = tucker.decompose_conv(conv, (5, 7))
    assert (first.kernel_size, core.kernel_size, last.kernel_size) == ((1, 1), (3, 3), (1, 1))
    assert core.strides == (strides, strides) and core.padding == padding
    assert not first.use_bias and not core.use_bias and last.use_bias == use_bias

    # Independent reference: the kernel rebuilt by einsum from the three layers'
    # kernels, in a plain Conv2D with the original's settings.
    u_in = first.kernel.numpy()[0, 0]              # (c, R1)
    u_out = last.kernel.numpy()[0, 0]              # (R2, f)
    rebuilt = np.einsum("hwab,ia,bj->hwij", core.kernel.numpy(), u_in, u_out)
    plain = layers.Conv2D(12, 3, strides=strides, padding=padding, use_bias=use_bias,
                          activation=activation)
    plain.build((None, 9, 9, 8))
    plain.set_weights([rebuilt] + ([conv.bias.numpy()] if use_bias else []))
    x = rng.normal(size=(2, 9, 9, 8)).astype("float32")
    np.testing.assert_allclose(last(core(first(x))), plain(x), atol=1e-4)


def test_pointwise_kernel_error_matches_truncated_svd():
    # For a 1x1 kernel, Tucker-2 with R1 = R2 = r is the best rank-r matrix
    # approximation: its error is the tail of the singular values (Eckart-Young).
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(20, 16))
    singular = np.linalg.svd(matrix, compute_uv=False)
    for r in (2, 5, 9):
        expected = np.sqrt(np.sum(singular[r:] ** 2)) / np.linalg.norm(matrix)
        got = tucker.relative_error(matrix[None, None], (r, r))
        assert got == pytest.approx(expected, rel=1e-4)


def test_reconstruction_error_never_rises_with_rank():
    kernel = np.random.default_rng(4).normal(size=(3, 3, 24, 32))
    for fixed_in in (True, False):
        errors = [tucker.relative_error(kernel, (8, r) if fixed_in else (r, 8))
                  for r in (1, 2, 4, 8, 16, 24)]
        assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:]))
    # tensorly's error comes from the norms, sqrt(|W|^2 - |core|^2): ~1e-8 at full rank
    assert tucker.relative_error(kernel, (24, 32)) < 1e-6


def test_the_reported_error_is_the_reconstruction_error():
    kernel = np.random.default_rng(5).normal(size=(3, 3, 12, 10))
    approx = tucker.reconstruct_kernel(*tucker.decompose_kernel(kernel, (4, 5)))
    expected = np.linalg.norm(kernel - approx) / np.linalg.norm(kernel)
    assert tucker.relative_error(kernel, (4, 5)) == pytest.approx(expected, rel=1e-6)


def test_ranks_recorded_are_the_core_s_not_the_requested(monkeypatch):
    real = tucker._partial_tucker

    def lowered(kernel, ranks):  # as a decomposition that cannot reach R1 would return
        first, core, last, error = real(kernel, (ranks[0] - 1, ranks[1]))
        return first, core, last, error
    monkeypatch.setattr(tucker, "_partial_tucker", lowered)
    decomposed, ranks = tucker.decompose_model(tiny_classifier(), ranks_for(4))
    assert ranks == {"conv2": [3, 8], "conv3": [7, 16]}  # requested: [4, 8] and [8, 16]
    assert decomposed.get_layer("conv3_tucker_core").kernel.shape[2:] == (7, 16)


def test_layers_that_cannot_be_decomposed_are_refused():
    depthwise = layers.DepthwiseConv2D(3)
    depthwise.build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="not a channels-last Conv2D"):
        tucker.decompose_conv(depthwise, (2, 2))
    with pytest.raises(ValueError, match="no layer named"):
        tucker.decompose_model(tiny_classifier(), ranks_for(4), layer_names=["nope"])


# ---- the script --------------------------------------------------------------

def run(argv):
    return cli.run_main(part3_tucker.main, argv)


@pytest.mark.parametrize("argv, message", [
    (["--k", "0"], "k must be an integer in 1..8"),
    (["--k", "9"], "k must be an integer in 1..8"),
    (["--k", "2.5"], "k must be an integer in 1..8"),
    (["--fine-tune", "-1"], "must be at least 0"),
])
def test_bad_k_exits_2_with_one_line(argv, message, capsys):
    assert message in argparse_error(part3_tucker.main, argv, capsys)


def test_bad_model_and_layer_exit_2(tmp_path, tiny_cifar, tiny_model_file, no_repo_model,
                                    capsys):
    out = ["--output-dir", str(tmp_path), "--data-dir", tiny_cifar[0]]
    assert run(out + ["--model", str(tmp_path / "missing.keras")]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert run(out) == 2  # no models/reference.keras there: say how to make it
    assert "part1_cnn.py --experiments reference" in capsys.readouterr().err
    not_a_model = tmp_path / "junk.keras"
    not_a_model.write_text("hello")
    assert run(out + ["--model", str(not_a_model)]) == 2
    assert "not a .keras file" in capsys.readouterr().err
    regressor = keras.Sequential([keras.Input((32, 32, 3)), layers.Flatten(), layers.Dense(1)])
    regressor.save(tmp_path / "regressor.keras")
    assert run(out + ["--model", str(tmp_path / "regressor.keras")]) == 2
    assert "not a CIFAR-10 classifier" in capsys.readouterr().err
    assert run(out + ["--model", tiny_model_file, "--layer", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--layer 'nope'" in err and len(err.strip().splitlines()) == 1


def test_tiny_end_to_end_run(tiny_cifar, tiny_model_file, tmp_path, sealed_test_set):
    sealed_test_set(part3_tucker)
    out = str(tmp_path)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", out, "--model", tiny_model_file,
            "--layer", "conv3", "--k", "2", "8", "--precision", "float32",
            "--fine-tune", "1", "--train-limit", "40", "--batch-size", "20"]
    assert run(argv) == 0
    results = stored_run(out, "part3")
    assert results["reconstruction"]["layer"] == "conv3"
    assert results["settings"]["validation"] == "train[90:100]"
    assert [row["k"] for row in results["sweep"]] == [2, 8]
    full = results["sweep"][1]
    assert full["ranks"] == {"conv2": [8, 16], "conv3": [16, 32]}
    assert full["validation_accuracy"] == pytest.approx(
        results["original"]["validation_accuracy"])
    assert full["validation_accuracy_fine_tuned"] is not None
    assert {"test_accuracy"} <= set(full) and "test_accuracy" in results["original"]
    assert sealed_test_set.state["reads"] == 3   # the original, k = 2, k = 8: once each
    (timing,) = results["timings"]
    assert set(timing["models"]) == {"original", "k2", "k8"}
    assert timing["params"]["batch_norm_folded"] is True and timing["params"]["repeats"] == 7
    assert timing["machine"]["cpu"] and len(timing["models"]["k2"]["all"]) == 7
    for name in ("reconstruction_vs_rank", "accuracy_vs_k", "forward_time_vs_k"):
        assert (tmp_path / "figures" / f"part3_{name}.png").read_bytes().startswith(b"\x89PNG")
    model_file = tmp_path / "models" / "tucker_k2.keras"
    assert results["sweep"][0]["model_sha256"] == file_digest(str(model_file))
    # --plot-only redraws from the JSON alone.
    (tmp_path / "figures" / "part3_accuracy_vs_k.png").unlink()
    assert run(["--plot-only", "--output-dir", out]) == 0
    assert (tmp_path / "figures" / "part3_accuracy_vs_k.png").exists()

    # A rerun reuses finished rows, their models and the timing: nothing read again.
    saved = {k: os.stat(tmp_path / "models" / f"tucker_k{k}.keras").st_mtime_ns for k in (2, 8)}
    assert run(argv) == 0
    for k, mtime in saved.items():
        assert os.stat(tmp_path / "models" / f"tucker_k{k}.keras").st_mtime_ns == mtime
    assert stored_run(out, "part3") == results and sealed_test_set.state["reads"] == 3

    # A model file changed since its row was stored is said, made again, its row replaced.
    keras.saving.load_model(tiny_model_file).save(model_file)
    assert run(argv + ["--k", "2"]) == 0
    again = stored_run(out, "part3")
    assert again["sweep"][0]["model_sha256"] == file_digest(str(model_file))
    assert again["sweep"][1] == results["sweep"][1]
    assert list((tmp_path / "results").glob("part3.backup-*.json"))


def test_the_table_marks_rows_this_machine_did_not_time():
    from common import report
    run = {"original": {"validation_accuracy": 0.9, "params": 100, "flops": 1000},
           "sweep": [{"k": k, "ranks": {"c": [k, k]}, "params": 10 * k, "flops": 100 * k,
                      "validation_accuracy": 0.5, "validation_accuracy_recalibrated": 0.6,
                      "validation_accuracy_fine_tuned": None} for k in (2, 4)]}
    timing = {"label": "CPU X", "models": {"original": {"ratio": 1.0}, "k4": {"ratio": 0.5}}}
    lines = report.part3_table(run, timing).splitlines()
    assert "time ratio (CPU X)" in lines[0]
    assert lines[3].endswith("| not timed |") and lines[4].endswith("| 0.500 |")
