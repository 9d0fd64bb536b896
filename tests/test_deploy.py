"""LiteRT flatbuffers against the Keras models they come from; the timing harness; Part 4."""

import copy
import gzip
import json
import os
import time

import keras
import numpy as np
import pytest
from keras import layers

import part4_deploy
from common import cli, deploy, machine, measure, pruning, structured, tucker
from common.inference import fold_batchnorm
from common.results import file_digest, settings_label, write_json
from tests.conftest import stored_run, tiny_classifier
from tests.test_inference import randomize_batchnorm


def images(n=8, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def model():
    """The tiny classifier with non-trivial batch-norm statistics."""
    model = tiny_classifier()
    randomize_batchnorm(model)
    return model


@pytest.mark.parametrize("fold", [False, True])
def test_float32_flatbuffer_computes_what_keras_computes(model, fold):
    source = fold_batchnorm(model)[0] if fold else model
    flatbuffer = deploy.to_flatbuffer(source)
    np.testing.assert_allclose(deploy.predict(flatbuffer, images(), batch_size=3),
                               model.predict(images(), verbose=0), rtol=1e-4, atol=1e-4)


def test_int8_predicts_what_float32_predicts_on_most_images(model):
    calibration = images(64, seed=2)
    x = images(40, seed=3)
    float32 = deploy.predict(deploy.to_flatbuffer(model), x).argmax(1)
    for precision in ("dynamic_int8", "int8"):
        flatbuffer = deploy.to_flatbuffer(model, precision, calibration)
        assert (deploy.predict(flatbuffer, x).argmax(1) == float32).mean() >= 0.8, precision
    assert {"QUANTIZE", "DEQUANTIZE"} <= deploy.op_names(flatbuffer)  # float32 in and out


def test_sizes_int8_is_smaller_and_sparse_encoding_shrinks_a_pruned_model(model):
    flatbuffer = deploy.to_flatbuffer(model)
    assert deploy.sizes(flatbuffer) == {"bytes": len(flatbuffer),
                                        "gzip_bytes": len(gzip.compress(flatbuffer, 9))}
    int8 = deploy.to_flatbuffer(model, "int8", images(16))
    assert len(int8) < len(flatbuffer) / 2  # the weights take 1 byte instead of 4
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    pruning.apply_masks(pruned, pruning.global_masks(pruning.kernels_of(pruned), 0.9))
    dense_encoded = deploy.to_flatbuffer(pruned)
    sparse_encoded = deploy.to_flatbuffer(pruned, sparse=True)
    assert len(sparse_encoded) < 0.6 * len(dense_encoded)
    np.testing.assert_allclose(deploy.predict(sparse_encoded, images()),
                               deploy.predict(dense_encoded, images()), rtol=1e-4, atol=1e-5)


def test_int8_without_calibration_images_and_unknown_precision_are_refused(model):
    with pytest.raises(ValueError, match="calibration_images"):
        deploy.to_flatbuffer(model, "int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        deploy.to_flatbuffer(model, "float16")


@keras.saving.register_keras_serializable(package="tests")
class Erf(layers.Layer):
    """erf has no LiteRT builtin op."""

    def call(self, x):
        return keras.ops.erf(x)


def model_with_erf():
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = Erf(name="odd_one")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax", name="head")(x))


def test_a_layer_without_builtin_ops_is_named():
    with pytest.raises(ValueError, match="layer 'odd_one' \\(Erf\\) has no LiteRT builtin op"):
        deploy.to_flatbuffer(model_with_erf())


def test_timing_interleaves_every_runner_in_each_round_and_excludes_warm_up():
    calls = []

    def runner(name, warm_up_seconds):
        def run(x):
            if not any(c == name for c, _ in calls):  # the first call: slow, as a warm-up is
                time.sleep(warm_up_seconds)
            calls.append((name, x))
        return run
    runners = {name: runner(name, 0.3) for name in "abcd"}
    seconds = measure.time_interleaved(runners, [0, 1, 2], repeats=6, seed=0)
    warm_up, timed = calls[:12], calls[12:]
    assert sorted(warm_up) == sorted((n, x) for n in "abcd" for x in range(3))
    rounds = [timed[i:i + 12] for i in range(0, len(timed), 12)]
    assert len(rounds) == 6
    orders = []
    for round_calls in rounds:  # each runner once per round, over all inputs in a row
        order = [name for name, _ in round_calls[::3]]
        assert sorted(order) == list("abcd")
        assert round_calls == [(n, x) for n in order for x in range(3)]
        orders.append(tuple(order))
    assert len(set(orders)) > 1  # a fresh order each round
    assert all(len(s) == 6 and max(s) < 0.1 for s in seconds.values())  # no warm-up in it


def test_latency_per_image_keys_models_and_threads(model):
    flatbuffer = deploy.to_flatbuffer(model)
    seconds = deploy.time_per_image({"a": flatbuffer, "b": flatbuffer}, images(3),
                                    threads=(1, 2), repeats=2)
    assert set(seconds) == {("a", 1), ("a", 2), ("b", 1), ("b", 2)}
    assert all(len(s) == 2 and 0 < min(s) < 1 for s in seconds.values())


# ---- part4_deploy.py ------------------------------------------------------------

def run(argv):
    return cli.run_main(part4_deploy.main, argv)


def settings_of(tiny_cifar, tiny_model_file):
    """What a Part 2 or 3 run made from the tiny model on the tiny data holds."""
    from common.data import load_for_run
    return {"model_sha256": file_digest(tiny_model_file), "train_limit": None,
            **load_for_run(tiny_cifar[0]).data_id, "fine_tune": {"epochs": 1}}


def compressed_models_beside(out, tiny_model_file, settings):
    """A Tucker k = 4, a filter-removed and a 90%-pruned tiny model in
    out/models/, with the results rows of Parts 3 and 2 that name them."""
    original = keras.saving.load_model(tiny_model_file)
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    os.makedirs(os.path.join(out, "results"), exist_ok=True)

    def saved(model, name):
        path = os.path.join(out, "models", f"{name}.keras")
        model.save(path)
        return {"model": path, "model_sha256": file_digest(path), "test_accuracy": 0.25}
    decomposed, _ = tucker.decompose_model(original, lambda c, f: tucker.tucker_ranks(c, f, 4))
    write_json(os.path.join(out, "results", "part3.json"), {"runs": [{
        "settings": settings, "sweep": [{"k": 4, **saved(decomposed, "tucker_k4")}]}]})
    smaller = structured.remove_filters(original, {"conv2": [0, 2, 4, 6, 8, 10, 12, 14]})
    write_json(os.path.join(out, "results", "part2_structured.json"), {"runs": [{
        "settings": settings, "finetuned": [{"flops_reduction": 0.5,
                                             **saved(smaller, "structured_50")}]}]})
    pruning.apply_masks(original, pruning.global_masks(pruning.kernels_of(original), 0.9))
    write_json(os.path.join(out, "results", "part2.json"), {"runs": [{
        "settings": settings, "finetune": [{"sparsity": 0.9, **saved(original, "pruned_90")}]}]})


def test_tiny_end_to_end_run(tiny_cifar, tiny_model_file, tmp_path, monkeypatch, capsys,
                             sealed_test_set):
    out = str(tmp_path)
    compressed_models_beside(out, tiny_model_file, settings_of(tiny_cifar, tiny_model_file))
    sealed_test_set(part4_deploy)
    converted = []

    def spy(jobs):
        converted.extend((precision, sparse, images) for _, precision, images, sparse in jobs)
        return convert(jobs)
    convert = deploy.to_flatbuffers
    monkeypatch.setattr(deploy, "to_flatbuffers", spy)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", out, "--model", tiny_model_file,
            "--timing-images", "3", "--timing-repeats", "2"]
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "structured 0.55, 0.65, 0.75: no row made from it" in printed
    assert (f"--flops-reductions 0.55 0.65 0.75 --model {tiny_model_file} --output-dir {out}"
            in printed)     # the options that make a model this run finds
    assert "LiteRT on " + machine.label(machine.identity()) in printed

    results = stored_run(out, "part4")
    names = {row["name"] for row in results["models"]}
    assert names == {f"{m} {p}" for m in ("original", "tucker_k4", "structured_50", "pruned_90")
                     for p in deploy.PRECISIONS} | {"pruned_90 float32 sparse",
                                                    "pruned_90 int8 sparse"}
    assert sealed_test_set.state["reads"] == len(names)        # once per flatbuffer
    train, test = tiny_cifar[1]["train"][0], tiny_cifar[1]["test"][0]
    calibration = [c for p, _, c in converted if p == "int8"]
    assert calibration and all(len(c) == 90 for c in calibration)
    for batch in calibration:  # training images, never validation or test images
        pixels = np.round(batch * 255).astype(np.uint8)
        assert all(any(np.array_equal(p, t) for t in train[:90]) for p in pixels)
        assert not any(np.array_equal(p, t) for p in pixels for t in test)
    by_name = {row["name"]: row for row in results["models"]}
    base = by_name["original float32"]["latency"]
    for row in results["models"]:
        assert set(row["latency"]) == {"1", "2"}
        for threads, summary in row["latency"].items():   # each ratio: its median over
            assert summary["ratio"] == pytest.approx(    # the original's, same threads
                summary["median"] / base[threads]["median"])
        assert os.path.isfile(os.path.join(out, row["tflite"]) if not os.path.isabs(
            row["tflite"]) else row["tflite"])
        assert row["gzip_bytes"] < row["bytes"] and 0 <= row["test_accuracy"] <= 1
    assert by_name["structured_50 int8"]["keras_test_accuracy"] == 0.25
    assert by_name["pruned_90 float32 sparse"]["bytes"] < by_name["pruned_90 float32"]["bytes"]
    assert results["meta"]["machine"] == results["settings"]["machine"] == machine.identity()
    assert results["settings"]["timing"] == {"threads": [1, 2], "batch_size": 1, "images": 3,
                                             "repeats": 2}
    assert set(results["timing"]["digests"]) == names
    figure = tmp_path / "figures" / "part4_deploy.png"
    assert figure.read_bytes().startswith(b"\x89PNG")

    # Rerun: everything measured is reused; --plot-only redraws.
    converted.clear()
    assert run(argv) == 0 and converted == []
    assert "14 of 14 done already, skipped" in capsys.readouterr().out
    figure.unlink()
    assert run(["--plot-only", "--output-dir", out]) == 0 and figure.exists()

    # A truncated .tflite is converted again into the same file: what was
    # measured on that file (accuracy, latency) stands, nothing is timed again.
    tflite = tmp_path / "models" / "litert" / "tucker_k4_float32.tflite"
    tflite.write_bytes(tflite.read_bytes()[:1000])
    stored = json.loads((tmp_path / "results" / "part4.json").read_text())
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "tucker_k4 float32: " in printed and "is missing or has changed" in printed
    assert converted[0][:2] == ("float32", False) and "timing 14 flatbuffers" not in printed
    assert "these 14 flatbuffers were timed together already, reused" in printed
    assert file_digest(str(tflite)) == by_name["tucker_k4 float32"]["tflite_sha256"]
    assert json.loads((tmp_path / "results" / "part4.json").read_text()) == stored

    # A swapped .keras file: its row no longer matches, so the model is not
    # deployed; the others are a part of the stored timing, which stays whole.
    keras.saving.load_model(tiny_model_file).save(tmp_path / "models" / "tucker_k4.keras")
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "not deployed: tucker 4" in printed and "has changed since its row" in printed
    assert "these 11 flatbuffers were timed together already (with 3 more), reused" in printed
    assert json.loads((tmp_path / "results" / "part4.json").read_text()) == stored

    # --force makes and times again all that are here, together; the rows not
    # timed now lose their latency (every latency stored is of one run).
    assert run(argv + ["--force"]) == 0
    printed = capsys.readouterr().out
    assert "timing 11 flatbuffers" in printed
    after = {row["name"]: row for row in stored_run(out, "part4")["models"]}
    assert all(("latency" in row) != name.startswith("tucker_k4") for name, row in after.items())


def quick_argv(tiny_cifar, model, out):
    """Options of a quick Part 4 run of `model` into `out`: 2 timing images, 1 round."""
    return ["--data-dir", tiny_cifar[0], "--output-dir", str(out), "--model", model,
            "--timing-images", "2", "--timing-repeats", "1"]


@pytest.fixture(scope="module")
def stored_part4(tiny_cifar, tiny_model_file, tmp_path_factory):
    """The run a quick Part 4 run stores (tiny data, 2 timing images, 1 round)."""
    out = tmp_path_factory.mktemp("part4")
    assert run(quick_argv(tiny_cifar, tiny_model_file, out)) == 0
    return stored_run(out, "part4")


def test_another_machine_measures_again_and_stores_beside(tiny_cifar, tiny_model_file, tmp_path,
                                                         stored_part4, monkeypatch):
    (tmp_path / "results").mkdir()
    write_json(str(tmp_path / "results" / "part4.json"), {"runs": [stored_part4]})
    here = machine.identity()
    monkeypatch.setattr(machine, "identity", lambda *a: {**here, "cpu": "Other CPU",
                                                         "features": ["avx2", "fma"]})
    assert run(quick_argv(tiny_cifar, tiny_model_file, tmp_path)) == 0
    first, second = (stored_run(tmp_path, "part4", i) for i in (0, 1))
    assert first == stored_part4
    assert first["settings"]["machine"]["cpu"] == here["cpu"]
    assert second["settings"]["machine"]["cpu"] == "Other CPU"
    assert len(first["models"]) == len(second["models"]) == 3
    label = f"run-{settings_label(second['settings'])}"
    assert (tmp_path / "figures" / label / "part4_deploy.png").exists()


@pytest.mark.parametrize("damage, where", [
    (lambda row: row.pop("source_sha256"), "missing 'source_sha256'"),
    (lambda row: row.pop("name"), "missing 'name'"),
    (lambda row: row.update(latency="fast"), ".latency: expected an object"),
    (lambda row: row.update(test_accuracy=None), ".test_accuracy: expected"),
    (lambda row: row["latency"]["1"].update(ratio="0.5"), ".latency.1.ratio: expected"),
])
def test_a_damaged_row_exits_2_and_leaves_the_file_as_it_was(tiny_cifar, tiny_model_file,
                                                             stored_part4, tmp_path, capsys,
                                                             damage, where):
    data = copy.deepcopy(stored_part4)
    damage(data["models"][1])
    path = tmp_path / "results" / "part4.json"
    path.parent.mkdir()
    write_json(str(path), {"runs": [data]})
    before = path.read_bytes()
    capsys.readouterr()
    assert run(quick_argv(tiny_cifar, tiny_model_file, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: damaged: runs[0].models[1]" in err
    assert where in err and path.read_bytes() == before


def test_a_quick_part3_run_leaves_the_committed_rows_and_models_alone(
        tiny_cifar, tiny_model_file, tmp_path, monkeypatch):
    """Issue: a quick run wrote the model file a committed row names, and Part 4
    then replaced the committed rows. Here the 'repository' holds a committed
    Part 3 run; the quick run (other settings) goes to runs/, Part 4 deploys
    the committed model, and no committed file changes."""
    import part3_tucker
    monkeypatch.setattr(cli, "REPO_ROOT", str(tmp_path))
    (tmp_path / "models").mkdir()
    reference = tmp_path / "models" / "reference.keras"
    reference.write_bytes(open(tiny_model_file, "rb").read())
    committed = ["--data-dir", tiny_cifar[0], "--k", "4", "--fine-tune", "0", "--layer", "conv3",
                 "--precision", "float32"]
    assert cli.run_main(part3_tucker.main, committed) == 0
    files = {p: p.read_bytes() for p in (tmp_path / "results").iterdir()}
    files.update({p: p.read_bytes() for p in (tmp_path / "models").iterdir() if p.is_file()})
    assert cli.run_main(part3_tucker.main, committed + ["--train-limit", "30"]) == 0
    assert {p: p.read_bytes() for p in files} == files          # nothing committed changed
    (quick,) = (tmp_path / "runs").iterdir()
    assert (quick / "models" / "tucker_k4.keras").exists()
    assert cli.run_main(part4_deploy.main, ["--data-dir", tiny_cifar[0], "--output-dir",
                                            str(tmp_path / "out"), "--timing-images", "2",
                                            "--timing-repeats", "1"]) == 0
    deployed = {row["name"]: row for row in stored_run(tmp_path / "out", "part4")["models"]}
    assert deployed["tucker_k4 float32"]["source"] == "models/tucker_k4.keras"
    assert deployed["tucker_k4 float32"]["source_sha256"] == file_digest(
        str(tmp_path / "models" / "tucker_k4.keras"))


def test_a_model_litert_cannot_run_exits_2_naming_the_layer(tiny_cifar, tmp_path, capsys):
    path = str(tmp_path / "erf.keras")
    model_with_erf().save(path)
    assert run(["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path),
                "--model", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "layer 'odd_one' (Erf) has no LiteRT builtin op" in err
    assert "erf.keras" in err


def test_the_make_with_line_keeps_the_options_that_key_the_rows():
    args = part4_deploy.parse_args(["--model", "my models/r.keras", "--train-limit", "500",
                                    "--seed", "2", "--output-dir", "out"])
    assert part4_deploy.same_source_options(args, args.model, reference=False) == \
        " --model 'my models/r.keras' --train-limit 500 --seed 2 --output-dir out"
    assert part4_deploy.same_source_options(part4_deploy.parse_args([]), None, True) == ""


def test_a_missing_original_names_the_command_that_makes_it(tmp_path, no_repo_model, capsys):
    assert run(["--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model file not found; make it with: python part1_cnn.py --experiments reference" in err
