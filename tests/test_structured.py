"""Filter removal checked against the same filters zeroed in the original model;
FLOPs against Keras-built models; criteria and allocation on hand-made cases."""

import keras
import numpy as np
import pytest
from keras import layers

from common import measure, models, structured
from common.results import ResultsStore, file_digest, settings_label
from tests.conftest import tiny_classifier
from tests.test_inference import randomize_batchnorm


def images(n=6, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype("float32")


def reference_like(seed=0):
    """The reference net's shape at small widths: whitening, blocks of
    conv -> pool -> BN (no scale) -> GELU, global max pooling, linear head."""
    keras.utils.set_random_seed(seed)
    model = models.reference_cnn(widths=(8, 12, 12),
                                 whitening=models.whitening_kernel(images(4)))
    randomize_batchnorm(model, seed)
    return model


def zeroed(model, keep):
    """An independent computation of what removal means: a copy of `model` whose
    dropped filters are zero, with bias, and the batch norm after them (named
    as in these models) set so that the channel's output is exactly zero; the zero then
    passes GELU/ReLU and max pooling as zero, and the next layer reads nothing."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, kept in keep.items():
        conv = copy.get_layer(name)
        drop = np.setdiff1d(np.arange(conv.filters), kept)
        weights = conv.get_weights()
        weights[0][..., drop] = 0
        if conv.use_bias:
            weights[1][drop] = 0
        conv.set_weights(weights)
        names = {layer.name for layer in copy.layers}  # its batch norm, by the models' naming
        norm = name.replace("conv", "bn")
        if norm in names:
            layer = copy.get_layer(norm)
            values = {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w).copy()
                      for w in layer.weights}
            for key in ("beta", "moving_mean"):
                values[key][drop] = 0
            layer.set_weights([values[w.path.split("/")[-1]] for w in layer.weights])
    return copy


def random_keep(model, names, share, seed=0):
    rng = np.random.default_rng(seed)
    return {n: np.sort(rng.choice(model.get_layer(n).filters,
                                  max(1, round(share * model.get_layer(n).filters)),
                                  replace=False)) for n in names}


@pytest.mark.parametrize("build", [reference_like, tiny_classifier])
def test_removal_equals_zeroing_the_same_filters(build):
    model = build()
    keep = random_keep(model, structured.prunable_convs(model), 0.5)
    smaller = structured.remove_filters(model, keep)
    np.testing.assert_allclose(smaller.predict(images(), verbose=0),
                               zeroed(model, keep).predict(images(), verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert measure.count_params(smaller) < measure.count_params(model)


def test_shapes_of_batch_norm_next_conv_and_head():
    model = reference_like()
    keep = {"block2_conv2": [0, 3, 5, 7, 11], "block3_conv2": [1, 2]}
    smaller = structured.remove_filters(model, keep)
    assert smaller.get_layer("block2_conv2").kernel.shape == (3, 3, 12, 5)
    assert [w.shape for w in smaller.get_layer("block2_bn2").weights] == [(5,)] * 3
    assert smaller.get_layer("block3_conv1").kernel.shape == (3, 3, 5, 12)  # input channels
    assert smaller.get_layer("head").kernel.shape == (2, 10)                 # through the pool
    original = keras.ops.convert_to_numpy(model.get_layer("head").kernel)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(smaller.get_layer("head").kernel),
                                  original[[1, 2]])


def test_the_frozen_whitening_conv_is_not_prunable():
    names = structured.prunable_convs(reference_like())
    assert "whiten" not in names and names[0] == "block1_conv1" and len(names) == 6
    with pytest.raises(ValueError, match="'whiten' .* not a prunable conv"):
        structured.remove_filters(reference_like(), {"whiten": [0, 1]})


def test_a_sequential_model_with_flatten_stays_sequential_and_equal():
    keras.utils.set_random_seed(0)
    model = models.pooled_cnn()  # Part 1's step 6: conv, pool, conv, pool, Flatten, Dense
    keep = {"conv1": np.arange(0, 32, 3), "conv2": np.arange(1, 64, 2)}
    smaller = structured.remove_filters(model, keep)
    assert isinstance(smaller, keras.Sequential)
    assert smaller.get_layer("dense1").kernel.shape == (8 * 8 * 32, 128)
    np.testing.assert_allclose(smaller.predict(images(), verbose=0),
                               zeroed(model, keep).predict(images(), verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_the_model_passed_in_is_unchanged():
    model = reference_like()
    before = [w.copy() for w in model.get_weights()]
    shapes = [layer.output.shape for layer in model.layers]
    smaller = structured.remove_filters(model, random_keep(model, ["block1_conv1"], 0.5))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert shapes == [layer.output.shape for layer in model.layers]
    assert not {id(w) for w in smaller.weights} & {id(w) for w in model.weights}


@pytest.mark.parametrize("keep, message", [
    ({"block1_conv1": []}, "keep 1..8 distinct"),
    ({"block1_conv1": list(range(9))}, "keep 1..8 distinct"),
    ({"block1_conv1": [0, 0, 1]}, "keep 1..8 distinct"),
    ({"block1_conv1": [8]}, "indices in 0..7"),
    ({"conv9": [0]}, "no layer named 'conv9'"),
    ({"block1_bn1": [0]}, "not a prunable conv"),
])
def test_bad_keep_is_refused(keep, message):
    with pytest.raises(ValueError, match=message):
        structured.remove_filters(reference_like(), keep)


def test_a_conv_added_to_the_input_is_kept_whole_and_says_why():
    inputs = keras.Input((8, 8, 4))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    x = layers.Add(name="join")([a, inputs])
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="'a' .* not a prunable conv .*tied to the model input"):
        structured.remove_filters(model, {"a": [0, 1]})


def test_flops_after_matches_the_closed_form_of_the_reference_net():
    """reference_like: whitening 2x2 conv 3 -> 24 on 31x31, then per block a 3x3
    conv at the block's input size and one at half of it, global pool, a 10-way
    head: 2 * sum(H * W * kh * kw * c * f) + 2 * c_last * 10, by hand."""
    model = reference_like()
    counts = {"block1_conv1": 3, "block1_conv2": 5, "block2_conv1": 7, "block2_conv2": 2,
              "block3_conv1": 9, "block3_conv2": 4}
    macs = 31 * 31 * 4 * 3 * 24                               # whitening, kept whole
    macs += 31 * 31 * 9 * 24 * 3 + 15 * 15 * 9 * 3 * 5        # block 1: 31 -> 15
    macs += 15 * 15 * 9 * 5 * 7 + 7 * 7 * 9 * 7 * 2           # block 2: 15 -> 7
    macs += 7 * 7 * 9 * 2 * 9 + 3 * 3 * 9 * 9 * 4             # block 3: 7 -> 3
    macs += 4 * 10                                            # head
    assert structured.flops_after(model, counts) == 2 * macs


def test_flops_after_matches_keras_models_built_that_way():
    for model in (reference_like(), models.pooled_cnn()):
        keep = random_keep(model, structured.prunable_convs(model), 0.4, seed=3)
        counts = {n: len(k) for n, k in keep.items()}
        assert structured.flops_after(model, counts) == \
            measure.count_flops(structured.remove_filters(model, keep))


def test_l1_norms_and_keep_indices_by_hand():
    model = keras.Sequential([keras.Input((4, 4, 2)), layers.Conv2D(3, 1, use_bias=False,
                                                                     name="c")])
    model.get_layer("c").set_weights([np.array([[[[1, -4, 0.5], [2, 0, -0.5]]]], "float32")])
    norms = structured.l1_norms(model, ["c"])["c"]
    np.testing.assert_allclose(norms, [3, 4, 1])
    assert structured.keep_indices({"c": norms}, {"c": 2})["c"].tolist() == [0, 1]


@pytest.mark.parametrize("batch_size", [250, 3])     # one batch; batches of 3, 3, 3, 1
def test_activation_importance_is_mean_activation_times_weights_read(batch_size):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    x = layers.Conv2D(2, 1, use_bias=False, activation="relu", name="c")(inputs)
    outputs = layers.Dense(1, use_bias=False, name="d")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.get_layer("c").set_weights([np.array([[[[1.0, -2.0]]]], "float32")])
    model.get_layer("d").set_weights([np.array([[3.0], [5.0]], "float32")])
    x = np.random.default_rng(0).normal(size=(10, 4, 4, 1)).astype("float32")
    scores = structured.activation_importance(model, ["c"], x, batch_size)["c"]
    pooled = np.stack([np.maximum(x, 0), np.maximum(-2 * x, 0)], -1)[..., 0, :].mean(axis=(1, 2))
    np.testing.assert_allclose(scores, np.abs(pooled).mean(0) * [3, 5], rtol=1e-5)


def test_allocations_reach_the_flops_budget():
    model = reference_like()
    names = structured.prunable_convs(model)
    full = structured.flops_after(model, {n: model.get_layer(n).filters for n in names})
    scores = structured.l1_norms(model, names)
    for counts in (structured.uniform_counts(model, names, 0.5),
                   structured.global_counts(model, scores, 0.5)):
        assert structured.flops_after(model, counts) <= 0.5 * full
        assert all(1 <= counts[n] <= model.get_layer(n).filters for n in names)
    shares = structured.uniform_counts(model, names, 0.5)
    assert len({round(shares[n] / model.get_layer(n).filters, 1) for n in names}) == 1


def test_sensitivity_allocation_takes_from_the_layer_that_loses_least_per_flop():
    """Two convs of equal FLOPs: the insensitive one gives filters first."""
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(16, 3, padding="same", name="a")(inputs)
    x = layers.Conv2D(16, 1, padding="same", name="b")(x)
    x = layers.Conv2D(4, 3, padding="same", name="c")(x)
    model = keras.Model(inputs, x)
    curve = {"share": [1.0, 0.5, 0.25]}
    sensitivity = {"a": {**curve, "accuracy": [0.9, 0.5, 0.2]},     # fragile
                   "b": {**curve, "accuracy": [0.9, 0.89, 0.88]}}   # robust
    counts = structured.sensitivity_counts(model, sensitivity, 0.8)
    assert counts["a"] == 16 and counts["b"] < 16
    full = structured.flops_after(model, {"a": 16, "b": 16})
    assert structured.flops_after(model, counts) <= 0.8 * full


# ---- part2_structured.py --------------------------------------------------------

def test_tiny_end_to_end_run(tiny_cifar, tiny_model_file, tmp_path, capsys, sealed_test_set):
    import part2_structured
    from common import cli
    from tests.conftest import stored_run
    sealed_test_set(part2_structured)
    out = str(tmp_path)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", out, "--model", tiny_model_file,
            "--flops-reductions", "0.5", "0.504", "--fine-tune-epochs", "1",
            "--batch-size", "20", "--precision", "float32"]
    assert cli.run_main(part2_structured.main, argv) == 0
    run = stored_run(out, "part2_structured")
    assert set(run["sensitivity"]) == {"l1", "activation"}
    assert set(run["sensitivity"]["l1"]) == {"conv1", "conv2", "conv3"}
    assert len(run["candidates"]) == 12
    for row in run["candidates"]:
        assert row["flops_ratio"] <= 0.5 and 0 <= row["validation_accuracy_recalibrated"] <= 1
    assert sealed_test_set.state["reads"] == 3   # the original and the two fine-tuned models
    tuned = {row["flops_reduction"]: row for row in run["finetuned"]}
    for reduction, name in ((0.5, "structured_50"), (0.504, "structured_50.4")):
        model_file = tmp_path / "models" / f"{name}.keras"   # one file each
        assert tuned[reduction]["model_sha256"] == file_digest(str(model_file))
        assert "test_accuracy" in tuned[reduction]
    (keras_timing,), (litert_timing,) = run["keras_timings"], run["litert_timings"]
    assert set(keras_timing["models"]) == set(litert_timing["models"]) == {
        "original", "-50%", "-50.4%"}
    assert keras_timing["digests"]["-50.4%"] == tuned[0.504]["model_sha256"]
    figure = tmp_path / "figures" / "part2_structured.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    # A rerun skips every piece, the timings too; --plot-only redraws.
    assert cli.run_main(part2_structured.main, argv) == 0
    printed = capsys.readouterr().out
    assert "12 of 12 done already, skipped" in printed and "reusing" in printed
    assert "timed on this machine already" in printed
    figure.unlink()
    assert cli.run_main(part2_structured.main, ["--plot-only", "--output-dir", out]) == 0
    assert figure.exists()
    # Other reductions or fine-tuning: the sweep and the screen are taken over.
    other = argv[:argv.index("--flops-reductions")] + ["--flops-reductions", "0.5",
                                                       "--fine-tune-epochs", "0"]
    assert cli.run_main(part2_structured.main, other) == 0
    printed = capsys.readouterr().out
    assert "sensitivity and 6 candidates taken over from run-" in printed
    assert "sensitivity: 6 of 6 done already" in printed
    assert "pruned candidate: 6 of 6 done already" in printed
    taken = next(r for r in ResultsStore(str(tmp_path / "results" / "part2_structured.json"))
                 .runs() if r["settings"]["fine_tune"] is None)
    assert taken["sensitivity"] == run["sensitivity"]
    assert taken["screen_from"] == settings_label(run["settings"])


def test_an_interrupted_fine_tune_resumes_from_its_last_epoch(tmp_path):
    from common import finetune
    rng = np.random.default_rng(0)
    train = (rng.uniform(size=(20, 32, 32, 3)).astype("float32"),
             np.eye(10, dtype="float32")[rng.integers(0, 10, 20)])
    backup = str(tmp_path / "backup")
    real_end = keras.callbacks.BackupAndRestore.on_epoch_end

    class Killed(Exception):
        pass

    def killed_after_first(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if epoch == 0:
            raise Killed
    model = tiny_classifier()
    keras.callbacks.BackupAndRestore.on_epoch_end = killed_after_first
    try:
        with pytest.raises(Killed):
            finetune.fine_tune(model, train, train, epochs=2, batch_size=10, precision="float32",
                               teacher=tiny_classifier(1), backup_dir=backup, verbose=0)
    finally:
        keras.callbacks.BackupAndRestore.on_epoch_end = real_end
    begun = []
    real_begin = keras.callbacks.BackupAndRestore.on_epoch_begin
    keras.callbacks.BackupAndRestore.on_epoch_begin = \
        lambda self, epoch, logs=None: begun.append(epoch) or real_begin(self, epoch, logs)
    try:
        records = finetune.fine_tune(model, train, train, epochs=2, batch_size=10,
                                     precision="float32", teacher=tiny_classifier(1),
                                     backup_dir=backup, verbose=0)
    finally:
        keras.callbacks.BackupAndRestore.on_epoch_begin = real_begin
    assert begun == [1] and [r["epoch"] for r in records] == [1, 2]   # epoch 1 kept
    assert not (tmp_path / "backup").exists()


@pytest.mark.parametrize("argv, message", [
    (["--flops-reductions", "1"], "FLOPs reduction must be a number in (0, 1)"),
    (["--flops-reductions", "0"], "FLOPs reduction must be a number in (0, 1)"),
    (["--flops-reductions", "0.5", "0.5000001"], "name the same model (structured_50)"),
    (["--fine-tune-epochs", "-1"], "must be at least 0"),
    (["--fine-tune-peak-lr", "0"], "--fine-tune-peak-lr must be a number above 0"),
])
def test_bad_options_exit_2(argv, message, capsys):
    import part2_structured
    from tests.conftest import argparse_error
    assert message in argparse_error(part2_structured.main, argv, capsys)


def test_the_peak_learning_rate_keys_the_run():
    import part2_structured
    from common.finetune import FINE_TUNE
    data = {"data": "tiny"}

    def recipe(*options):
        args = part2_structured.parse_args(["--fine-tune-epochs", "2", *options])
        return part2_structured.run_settings(args, "digest", data)["fine_tune"]
    shared, changed = recipe(), recipe("--fine-tune-peak-lr", "0.8")
    assert shared["peak_learning_rate"] == FINE_TUNE["peak_learning_rate"]
    assert changed == {**shared, "peak_learning_rate": 0.8}
    assert recipe("--fine-tune-peak-lr", str(FINE_TUNE["peak_learning_rate"])) == shared


def test_an_unknown_or_unprunable_layer_exits_2(tiny_cifar, tiny_model_file, tmp_path, capsys):
    import part2_structured
    from common import cli
    for name in ("conv9", "head", "bn2"):
        assert cli.run_main(part2_structured.main, [
            "--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--model",
            tiny_model_file, "--layers", "conv2", name]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"--layers: {name}: not a prunable conv" in err and "conv1, conv2, conv3" in err


def test_a_model_with_no_prunable_conv_exits_2(tiny_cifar, tmp_path, capsys):
    import part2_structured
    from common import cli
    inputs = keras.Input((32, 32, 3))
    a = layers.Conv2D(3, 3, padding="same", name="a")(inputs)
    x = layers.Add(name="join")([a, inputs])
    x = layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    path = str(tmp_path / "residual.keras")
    keras.Model(inputs, x).save(path)
    assert cli.run_main(part2_structured.main, ["--data-dir", tiny_cifar[0], "--output-dir",
                                                str(tmp_path), "--model", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no conv whose filters can be removed" in err
