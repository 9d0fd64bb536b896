"""A user's own model through the part scripts (--model): a small ResNet
pruned and decomposed, written to its own folder; models a part cannot
take, and files that are not Keras models, refused in one line with exit 2,
nothing written."""

import os

import keras
import numpy as np
import pytest
from keras import layers

from common import cli, models
from tests.conftest import stored_run


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A ResNet-8 (one basic block per stage), untrained, saved."""
    keras.utils.set_random_seed(0)
    path = str(tmp_path_factory.mktemp("own") / "resnet8.keras")
    models.cifar_resnet(8, widths=(4, 8, 8)).save(path)
    return path


def depthwise_only(path):
    """A MobileNet-like model with no conv Tucker-2 can replace."""
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, strides=2, name="stem")(inputs)
    x = layers.DepthwiseConv2D(3, name="dw")(x)
    x = layers.Conv2D(8, 1, name="pw")(x)
    x = layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, x).save(path)
    return path


def test_filter_removal_prunes_a_resnet_through_its_adds(tiny_cifar, resnet_file, tmp_path,
                                                         capsys, monkeypatch):
    import part2_structured
    monkeypatch.setitem(part2_structured.CONFIG, "criteria", ["l1"])   # one is enough here
    monkeypatch.setitem(part2_structured.CONFIG, "sensitivity_shares", [0.5])
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--model",
            resnet_file, "--flops-reductions", "0.3", "--fine-tune-epochs", "0"]
    assert cli.run_main(part2_structured.main, argv) == 0
    printed = capsys.readouterr().out
    assert "groups of channels (--layers takes these names): stem_conv, " in printed
    run = stored_run(str(tmp_path), "part2_structured")
    assert {"stem_conv", "stage1_block1_conv1", "stage2_block1_proj"} <= \
        set(run["sensitivity"]["l1"])
    assert all(row["flops_ratio"] <= 0.7 for row in run["candidates"])


def test_tucker_decomposes_the_convs_inside_residual_blocks(tiny_cifar, resnet_file, tmp_path,
                                                            capsys):
    import part3_tucker
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--model",
            resnet_file, "--k", "4", "--fine-tune", "0"]
    assert cli.run_main(part3_tucker.main, argv) == 0
    run = stored_run(str(tmp_path), "part3")
    (row,) = run["sweep"]
    assert "stage1_block1_conv1" in row["ranks"] and "stem_conv" not in row["ranks"]
    assert "study" not in capsys.readouterr().out      # the study's rows: the reference's only


def test_magnitude_pruning_reaches_the_convs_inside_residual_blocks(tiny_cifar, resnet_file,
                                                                   tmp_path):
    import part2_prune
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--model", resnet_file,
            "--rates", "0", "0.5", "--sparsities", "0.5", "--fine-tune-sparsities", "0.5",
            "--fine-tune-epochs", "1", "--batch-size", "20", "--precision", "float32"]
    assert cli.run_main(part2_prune.main, argv) == 0
    run = stored_run(str(tmp_path), "part2")
    assert {"stem_conv", "stage1_block1_conv2", "stage2_block1_proj"} <= \
        set(run["layer_sensitivity"])
    (row,) = run["finetune"]
    assert row["measured_sparsity"] == pytest.approx(0.5, abs=1e-3)
    pruned = models.load_classifier(str(tmp_path / "models" / "pruned_50.keras"))
    kernel = pruned.get_layer("stage1_block1_conv2").kernel.numpy()
    assert 0 < (kernel == 0).mean() < 1                  # zeros inside a residual block


def channels_whole(path):
    """A model whose only conv's channels are normalized together: none can go."""
    inputs = keras.Input((32, 32, 3))
    x = layers.LayerNormalization()(layers.Conv2D(8, 3, strides=2, name="stem")(inputs))
    x = layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, x).save(path)
    return path


def test_the_latency_search_removes_filters_through_residual_adds(
        tiny_cifar, resnet_file, tmp_path, monkeypatch):
    """Part 5 end to end on a ResNet file, filter removal alone (Tucker-2 inside
    residual blocks: tests/test_search.py's residual space by hand; Part 5 with
    Tucker blocks: its end-to-end search on a chain)."""
    import part5_budget
    from common import deploy

    def bytes_as_seconds(flatbuffers, images, threads=(1, 2), repeats=7, seed=0,
                         progress=False):
        """LiteRT time stood in for by size (a tiny model's microseconds are noise)."""
        return {(name, t): [1e-9 * len(fb)] * repeats for name, fb in flatbuffers.items()
                for t in threads}
    monkeypatch.setattr(deploy, "time_per_image", bytes_as_seconds)
    monkeypatch.setitem(part5_budget.CONFIG, "calibration_models", 2)
    monkeypatch.setitem(part5_budget.CONFIG, "candidates", 1)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--model", resnet_file,
            "--quick", "--ranks", "none", "--latency-budget", "0.8", "--batch-size", "30",
            "--precision", "float32"]
    assert cli.run_main(part5_budget.main, argv) == 0
    run = stored_run(str(tmp_path), "part5_budget")
    (row,) = run["front"]
    assert row["screened_ratio"] <= 0.8 and 0 < row["flops_ratio"] <= 1
    layers_ = row["layers"]
    # the stage's sum keeps one width at every conv that writes to it
    assert layers_["stage1_block1_conv2"]["keep"] == layers_["stem_conv"]["keep"]
    assert layers_["stage1_block1_conv1"]["widths"][0] == layers_["stem_conv"]["widths"][1]
    # stage 2's and 3's blocks differ in size; a block is timed once per kind
    assert run["blocks"]["stage1_block1_conv1"].keys() == {"4x4", "2x2", "4x2", "2x4"}


@pytest.mark.parametrize("script, make, options, message", [
    ("part3_tucker", depthwise_only, ["--k", "4"], "no conv to decompose"),
    ("part5_budget", channels_whole, ["--latency-budget", "0.3"],
     "no conv whose filters can be removed: nothing to search"),
])
def test_a_model_a_part_cannot_take_exits_2_writing_nothing(
        script, make, options, message, tiny_cifar, tmp_path, capsys):
    import importlib
    model = make(str(tmp_path / "model.keras"))
    out = tmp_path / "out"
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(out), "--model", model, *options]
    assert cli.run_main(importlib.import_module(script).main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not list(out.glob("results/*.json")) and not list(out.glob("figures/*"))


def flatbuffer_file(path):
    from common.deploy import to_flatbuffer
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, layers.Dense(10)(layers.Flatten()(inputs)))
    with open(path, "wb") as f:
        f.write(to_flatbuffer(model))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: open(p, "wb").write(b"PK\x03\x04 damaged") and p, "not a .keras file"),
    (lambda p: open(p, "w").write("hello") and p, "not a .keras file"),
    (flatbuffer_file, "a LiteRT flatbuffer, not a Keras model"),
])
def test_a_file_that_is_not_a_keras_model_is_named_in_one_line(make, message, tmp_path):
    path = make(str(tmp_path / "model.keras"))
    with pytest.raises(ValueError, match=message) as err:
        models.load_classifier(path)
    assert "\n" not in str(err.value) and "File not found" not in str(err.value)


def test_a_custom_layer_is_named_as_such(tmp_path):
    @keras.saving.register_keras_serializable(package="test_own_model")
    class Twice(layers.Layer):
        def call(self, x):
            return 2 * x
    inputs = keras.Input((32, 32, 3))
    x = layers.Dense(10)(layers.GlobalAveragePooling2D()(Twice()(inputs)))
    path = str(tmp_path / "custom.keras")
    keras.Model(inputs, x).save(path)
    keras.saving.get_custom_objects().clear()
    with pytest.raises(ValueError, match="'Twice' is not one of Keras' own \\(a custom layer"):
        models.load_classifier(path)


def test_a_pruned_resnet_equals_its_zeroed_twin(resnet_file):
    """The structured module's names on a ResNet (its groups), end to end."""
    from common import channels, structured
    model = models.load_classifier(resnet_file)
    names = structured.prunable_convs(model)
    scores = structured.l1_norms(model, names)
    counts = structured.uniform_counts(model, names, 0.6)
    keep = structured.keep_indices(scores, counts)
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype("float32")
    smaller = structured.remove_filters(model, keep)
    twin = channels.zero_removed(structured.graph(model), keep)
    np.testing.assert_allclose(smaller.predict(x, verbose=0), twin.predict(x, verbose=0),
                               atol=1e-5)
    assert structured.flops_after(model, counts) <= 0.6 * structured.flops_after(model, {})
    assert os.path.exists(resnet_file)


def test_a_backbone_nested_in_a_classifier_is_opened_up(tiny_cifar, tmp_path):
    """A keras.applications-style model (a functional backbone called inside
    another model): its convs are found by name (Tucker-2 here)."""
    import part3_tucker
    keras.utils.set_random_seed(0)
    backbone = models.cifar_resnet(8, widths=(4, 8, 8))
    inputs = keras.Input((32, 32, 3))
    path = str(tmp_path / "wrapped.keras")
    keras.Model(inputs, backbone(layers.Rescaling(1.0)(inputs))).save(path)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path / "p3"), "--model", path,
            "--k", "4", "--fine-tune", "0"]
    assert cli.run_main(part3_tucker.main, argv) == 0
    (row,) = stored_run(str(tmp_path / "p3"), "part3")["sweep"]
    assert "stage1_block1_conv1" in row["ranks"]
