"""The latency-budget search: composition against plain surgery, the dynamic
programme against brute force, and part5_budget.py end to end on tiny data."""

import itertools

import keras
import numpy as np
import pytest

import part5_budget
from common import cli, machine, search, structured, tucker
from tests.conftest import stored_run, tiny_classifier
from tests.test_inference import randomize_batchnorm


def images(n=6, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype("float32")


def test_full_rank_tucker_of_a_filter_removed_model_is_that_model():
    model = tiny_classifier()
    randomize_batchnorm(model)
    scores = structured.l1_norms(model, search.chain(model))
    removed_only = search.build(model, [(0.5, None), (0.75, None), (0.5, None)], scores)
    composed = search.build(model, [(0.5, None), (0.75, 1.0), (0.5, 1.0)], scores)
    assert "conv3_tucker_core" in {layer.name for layer in composed.layers}
    np.testing.assert_allclose(composed.predict(images(), verbose=0),
                               removed_only.predict(images(), verbose=0), atol=1e-4)


@pytest.mark.parametrize("configuration", [
    [(0.5, None), (0.75, 0.5), (0.25, 0.25)], [(1.0, 0.5), (0.25, None), (0.75, 0.5)]])
def test_removal_and_decomposition_keep_the_chain_s_shapes(configuration):
    model = tiny_classifier()
    built = search.build(model, configuration, structured.l1_norms(model, search.chain(model)))
    for (c, f, rank_pair), name in zip(search.widths(model, search.chain(model), configuration),
                                       search.chain(model)):
        if rank_pair is None:
            assert built.get_layer(name).kernel.shape[2:] == (c, f)
        else:
            assert built.get_layer(f"{name}_tucker_in").kernel.shape[2:] == (c, rank_pair[0])
            assert built.get_layer(f"{name}_tucker_core").kernel.shape[2:] == rank_pair
            assert built.get_layer(f"{name}_tucker_out").kernel.shape[2:] == (rank_pair[1], f)
    assert built.predict(images(2), verbose=0).shape == (2, 10)


def test_a_block_is_its_conv_and_the_channel_wise_layers_after_it():
    model = tiny_classifier()
    block = search.block(model, "conv2", 6, 10, None)
    assert [type(layer).__name__ for layer in block.layers] == ["InputLayer", "Conv2D",
                                                                "Activation"]
    assert block.input_shape == (None, 32, 32, 6) and block.output_shape == (None, 16, 16, 10)
    decomposed = search.block(model, "conv2", 6, 10, (3, 4))
    assert [layer.kernel.shape for layer in decomposed.layers[1:4]] == [
        (1, 1, 6, 3), (3, 3, 3, 4), (1, 1, 4, 10)]


def test_the_dynamic_programme_finds_what_brute_force_finds():
    rng = np.random.default_rng(0)
    options = [(1.0, None), (0.5, None), (0.5, 0.5), (0.25, None)]
    cost = {(i, prev, o): float(rng.uniform(1, 10)) for i in range(3)
            for prev in (None, 1.0, 0.5, 0.25) for o in options}
    loss = {(i, o): 0.0 if o == (1.0, None) else float(rng.uniform(0, 0.1))
            for i in range(3) for o in options}

    def latency(index, previous, choice):
        return cost[index, previous, choice]
    front = search.best_configurations(latency, lambda i, c: loss[i, c], options, 3, 1e-6)
    every = []
    for config in itertools.product(options, repeat=3):
        keeps = [None] + [k for k, _ in config[:-1]]
        every.append((sum(latency(i, keeps[i], c) for i, c in enumerate(config)),
                      sum(loss[i, c] for i, c in enumerate(config)), config))
    for budget in (5.0, 12.0, 20.0, 30.0):
        best = min((e for e in every if e[0] <= budget), key=lambda e: e[1], default=None)
        found = min((f for f in front if f[0] <= budget), key=lambda f: f[1], default=None)
        assert (best is None) == (found is None)
        if best:
            assert found[1] == pytest.approx(best[1])
    assert [f[0] for f in front] == sorted(f[0] for f in front)      # fastest first ...
    assert all(a[1] > b[1] for a, b in zip(front, front[1:]))        # ... each loses less


def test_the_fitted_line_by_hand():
    slope, intercept, r2 = search.fit_line([1, 2, 3], [3, 5, 7])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    assert search.fit_line([1, 2, 3], [1, 3, 2])[2] == pytest.approx(0.25)


def run(argv):
    return cli.run_main(part5_budget.main, argv)


def test_tiny_end_to_end_search(tiny_cifar, tiny_model_file, tmp_path, sealed_test_set, capsys,
                                monkeypatch):
    sealed_test_set(part5_budget)
    monkeypatch.setattr(part5_budget, "CALIBRATION_MODELS", 2)
    from common import deploy
    timed = []

    def bytes_as_seconds(flatbuffers, images, threads=(1, 2), repeats=7, seed=0, progress=False):
        """A deterministic stand-in for LiteRT timing (a tiny model's microseconds are
        noise): a flatbuffer takes 1 ns per byte."""
        timed.append(sorted(flatbuffers))
        return {(name, t): [1e-9 * len(fb)] * repeats for name, fb in flatbuffers.items()
                for t in threads}
    monkeypatch.setattr(deploy, "time_per_image", bytes_as_seconds)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--model",
            tiny_model_file, "--quick", "--latency-budget", "0.9", "--batch-size", "30",
            "--precision", "float32"]
    assert run(argv) == 0
    result = stored_run(tmp_path, "part5_budget")
    (row,) = result["front"]
    assert row["screened_ratio"] <= 0.9 and row["budget"] == 0.9
    assert set(row["layers"]) == {"conv1", "conv2", "conv3"}
    assert result["precision"]["chosen"] in ("float32", "int8")
    assert set(result["blocks"]) == {"conv1", "conv2", "conv3"}
    assert len(result["calibration"]["points"]) == 3   # the reference and 2 random ones
    assert "test_accuracy" in row and sealed_test_set.state["reads"] == 1
    assert (tmp_path / "models" / "budget_0.9.tflite").exists()
    for name in ("front", "choices", "latency_model"):
        assert (tmp_path / "figures" / f"part5_budget_{name}.png").exists()

    assert result["calibration"]["r2"] > 0.9          # bytes add up, as latency should

    # The same machine: the blocks' timings are reused, nothing is timed again ...
    capsys.readouterr()
    timed.clear()
    assert run(argv) == 0
    assert "3 of 3 done already, skipped" in capsys.readouterr().out
    assert len(timed) == 1      # only the report's end-to-end timing
    # ... another machine measures everything again, into a run of its own.
    here = machine.identity()
    monkeypatch.setattr(machine, "identity", lambda *a: {**here, "cpu": "Other CPU"})
    assert run(argv) == 0
    other = stored_run(tmp_path, "part5_budget", 1)
    assert other["settings"]["machine"]["cpu"] == "Other CPU" and set(other["blocks"]) == {
        "conv1", "conv2", "conv3"}
    assert stored_run(tmp_path, "part5_budget", 0)["blocks"] == result["blocks"]


@pytest.mark.parametrize("argv, message", [
    (["--latency-budget", "0"], "a latency budget must be a number in (0, 1)"),
    (["--latency-budget-ms", "-1"], "--latency-budget-ms must be a number above 0"),
    (["--latency-budget", "0.1", "--latency-budget-ms", "1"], "give one of them"),
])
def test_bad_budgets_exit_2(argv, message, capsys):
    from tests.conftest import argparse_error
    assert message in argparse_error(part5_budget.main, argv, capsys)


def test_a_model_whose_convs_do_not_chain_is_refused():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, name="b")(inputs)
    heads = [keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)) for x in (a, b)]
    model = keras.Model(inputs, heads)     # a model's outputs keep their channels
    with pytest.raises(ValueError, match="'b' does not read the channels of 'a'"):
        search.chain(model)
    assert tucker.is_decomposable(model.get_layer("a"))
