"""The latency-budget search: composition against plain surgery, the dynamic
programme against brute force, and part5_budget.py end to end on tiny data."""

import itertools

import keras
import numpy as np
import pytest

import part5_budget
from common import cli, machine, search, structured
from tests.conftest import stored_run, tiny_classifier
from tests.test_inference import randomize_batchnorm


def images(n=6, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype("float32")


def chain_space(model, keeps=(1.0, 0.75, 0.5, 0.25), ranks=(None, 0.5, 1.0)):
    return search.space(model, keeps, ranks)


def test_full_rank_tucker_of_a_filter_removed_model_is_that_model():
    model = tiny_classifier()
    randomize_batchnorm(model)
    space = chain_space(model)
    scores = structured.l1_norms(model, list(space.sizes))
    removed_only = search.build(model, space, [(0.5, None), (0.75, None), (0.5, None)], scores)
    composed = search.build(model, space, [(0.5, None), (0.75, 1.0), (0.5, 1.0)], scores)
    assert "conv3_tucker_core" in {layer.name for layer in composed.layers}
    np.testing.assert_allclose(composed.predict(images(), verbose=0),
                               removed_only.predict(images(), verbose=0), atol=1e-4)


@pytest.mark.parametrize("configuration", [
    [(0.5, None), (0.75, 0.5), (0.25, 0.5)], [(1.0, 0.5), (0.25, None), (0.75, 0.5)]])
def test_removal_and_decomposition_keep_the_chain_s_shapes(configuration):
    model = tiny_classifier()
    space = chain_space(model)
    built = search.build(model, space, configuration, structured.l1_norms(model, list(space.sizes)))
    # by hand: conv1 3 -> 8, conv2 8 -> 16, conv3 16 -> 32 filters
    filters, c = (8, 16, 32), 3
    for (keep, rank), f, name in zip(configuration, filters, ("conv1", "conv2", "conv3")):
        f = round(keep * f)
        if rank is None:
            assert built.get_layer(name).kernel.shape[2:] == (c, f)
        else:
            r = (int(np.ceil(c * rank)), int(np.ceil(f * rank)))
            assert built.get_layer(f"{name}_tucker_in").kernel.shape[2:] == (c, r[0])
            assert built.get_layer(f"{name}_tucker_core").kernel.shape[2:] == r
            assert built.get_layer(f"{name}_tucker_out").kernel.shape[2:] == (r[1], f)
        c = f
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


def brute_force_front(space, latency, loss):
    """Every consistent configuration (a group's share equal at all its convs),
    enumerated: (seconds, loss) of each."""
    every = []
    per_conv = [[(k, r) for k in space.keeps for r in conv.rank_shares] for conv in space.convs]
    for config in itertools.product(*per_conv):
        try:
            widths = search.widths(space, config)
        except ValueError:      # two convs of one group disagree
            continue
        every.append((sum(latency(i, w) for i, w in enumerate(widths)),
                      sum(loss(i, c) for i, c in enumerate(config)), config))
    return every


def check_against_brute_force(space, budgets):
    rng = np.random.default_rng(0)
    costs, losses = {}, {}

    def latency(index, widths):
        return costs.setdefault((index, widths), float(rng.uniform(1, 10)))

    def loss(index, choice):
        return 0.0 if choice == search.IDENTITY else losses.setdefault(
            (index, choice), float(rng.uniform(0, 0.1)))
    # the loss the search sees is the one the brute force sums, conv by conv
    every = brute_force_front(space, latency, lambda i, c: loss(
        i, c if space.convs[i].chooses else (1.0, c[1])))
    front = search.best_configurations(space, latency, lambda i, c: loss(
        i, c if space.convs[i].chooses else (1.0, c[1])), 1e-6)
    for budget in budgets:
        best = min((e for e in every if e[0] <= budget), key=lambda e: e[1], default=None)
        found = min((f for f in front if f[0] <= budget), key=lambda f: f[1], default=None)
        assert (best is None) == (found is None)
        if best:
            assert found[1] == pytest.approx(best[1])
            search.widths(space, found[2])              # consistent
        limited = search.best_configurations(space, latency, lambda i, c: loss(
            i, c if space.convs[i].chooses else (1.0, c[1])), 1e-6, limit=budget)
        assert all(f[0] <= budget for f in limited)
        assert min((f[1] for f in limited), default=None) == (found and found[1])
    assert [f[0] for f in front] == sorted(f[0] for f in front)      # fastest first ...
    assert all(a[1] > b[1] for a, b in zip(front, front[1:]))        # ... each loses less


def test_the_dynamic_programme_finds_what_brute_force_finds_on_a_chain():
    space = search.space(tiny_classifier(), (1.0, 0.5, 0.25), (None, 0.5))
    assert [c.chooses for c in space.convs] == [True] * 3
    check_against_brute_force(space, (5.0, 12.0, 20.0, 30.0))


def tiny_resnet():
    keras.utils.set_random_seed(0)
    from common import models
    return models.cifar_resnet(8, widths=(4, 8, 8))


def test_the_dynamic_programme_finds_what_brute_force_finds_through_residual_adds():
    space = search.space(tiny_resnet(), (1.0, 0.5), (None, 0.5))
    # stem, then per stage conv1, (proj,) conv2: conv2 and proj write to the stage's sum
    assert [c.name for c in space.convs if not c.chooses] == [
        "stage1_block1_conv2", "stage2_block1_conv2", "stage3_block1_conv2"]
    check_against_brute_force(space, (20.0, 30.0, 40.0, 60.0))


def test_a_residual_space_by_hand():
    model = tiny_resnet()
    space = search.space(model, (1.0, 0.5), (None, 0.5))
    conv = {c.name: c for c in space.convs}
    assert conv["stage1_block1_conv1"].reads == (("stem_conv", 4, 1),)
    assert conv["stage1_block1_conv2"].makes == "stem_conv"     # the sum's channels
    assert conv["stage2_block1_proj"].rank_shares == (None,)    # 1x1: nothing to decompose
    configuration = search.alone(space, 0, (0.5, 0.5))          # the stem's group at half
    assert dict(zip(conv, configuration))["stage1_block1_conv2"] == (0.5, None)
    widths = dict(zip(conv, search.widths(space, configuration)))
    assert widths["stem_conv"] == (3, 2, (2, 1)) and widths["stage1_block1_conv1"][0] == 2
    with pytest.raises(ValueError, match="which an earlier conv keeps 0.5"):
        search.widths(space, [(0.5, None)] + [(1.0, None)] * (len(space.convs) - 1))
    assert search.measured_alone(space, 2) == [(1.0, 0.5)]      # conv2: its rank alone
    built = search.build(model, space, configuration,
                         structured.l1_norms(model, list(space.sizes)))
    assert built.get_layer("stage1_block1_conv2").filters == 2
    assert built.predict(images(2), verbose=0).shape == (2, 10)


def test_a_resnet_block_stops_at_the_residual_add():
    model = tiny_resnet()
    assert [type(layer).__name__ for layer in search.segment(model, "stage1_block1_conv1")] == [
        "Conv2D", "BatchNormalization", "ReLU"]
    assert [type(layer).__name__ for layer in search.segment(model, "stage1_block1_conv2")] == [
        "Conv2D", "BatchNormalization"]
    assert search.block_signature(model, "stage1_block1_conv1") != \
        search.block_signature(model, "stage1_block1_conv2")


def test_the_budget_correction_and_the_feasible_by_hand():
    rows = [{"ratio": 0.12, "predicted_ratio": 0.1}, {"ratio": 0.11, "predicted_ratio": 0.1},
            {"ratio": 0.15, "predicted_ratio": 0.1}]
    assert search.aim_lower(1.0, rows) == pytest.approx(1.2)      # the median of 1.1, 1.2, 1.5
    assert search.aim_lower(1.3, rows) == 1.3
    front = [(1.0, 0.3, "a"), (2.0, 0.2, "b"), (3.0, 0.1, "c")]
    assert search.within(front, {"a": 1, "b": 2, "c": 3, "u": 2.5}.get, 2.5, "u") == ["u", "b", "a"]
    assert search.within(front, {"a": 1, "b": 2, "c": 3, "u": 4}.get, 2.5, "u") == ["b", "a"]
    assert search.parse_configuration("1/none 0.5/0.25") == ((1.0, None), (0.5, 0.25))
    assert search.configurations_key(((1.0, None), (0.5, 0.25))) == "1/none 0.5/0.25"


def test_the_fitted_line_by_hand():
    slope, intercept, r2 = search.fit_line([1, 2, 3], [3, 5, 7])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    assert search.fit_line([1, 2, 3], [1, 3, 2])[2] == pytest.approx(0.25)


def run(argv):
    return cli.run_main(part5_budget.main, argv)


def test_tiny_end_to_end_search(tiny_cifar, tiny_model_file, tmp_path, sealed_test_set, capsys,
                                monkeypatch):
    sealed_test_set(part5_budget)
    monkeypatch.setitem(part5_budget.CONFIG, "calibration_models", 2)
    monkeypatch.setitem(part5_budget.CONFIG, "candidates", 1)
    from common import deploy
    timed = []

    def bytes_as_seconds(flatbuffers, images, threads=(1, 2), repeats=7, seed=0, progress=False):
        """A deterministic stand-in for LiteRT timing (a tiny model's microseconds are
        noise): a flatbuffer takes 1 ns per byte."""
        timed.append(sorted(flatbuffers))
        return {(name, t): [1e-9 * len(fb)] * repeats for name, fb in flatbuffers.items()
                for t in threads}
    monkeypatch.setattr(deploy, "time_per_image", bytes_as_seconds)
    converted, convert = [], deploy.to_flatbuffers

    def recorded(jobs):
        flatbuffers = convert(jobs)
        converted.extend(flatbuffers)
        return flatbuffers
    monkeypatch.setattr(deploy, "to_flatbuffers", recorded)
    argv = ["--data-dir", tiny_cifar[0], "--output-dir", str(tmp_path), "--model",
            tiny_model_file, "--quick", "--latency-budget", "0.9", "--batch-size", "30",
            "--precision", "float32"]
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "converted and timed" in printed and "10,000" not in printed  # the images it has
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
    assert len(set(converted)) == len(converted)       # the reference converted once a precision

    # The same machine: the blocks' timings are reused, nothing is timed again ...
    capsys.readouterr()
    timed.clear()
    assert run(argv) == 0
    assert "3 of 3 done already, skipped" in capsys.readouterr().out
    assert len(timed) == 1      # only the report's end-to-end timing
    # ... and the run is this machine's: another machine's settings differ, so it
    # measures everything again in a run of its own (the store keeps runs of
    # other settings apart: tests/test_results.py).
    assert result["settings"]["machine"] == machine.identity()
    assert result["blocks"] == stored_run(tmp_path, "part5_budget")["blocks"]


@pytest.mark.parametrize("argv, message", [
    (["--latency-budget", "0"], "a latency budget must be a number in (0, 1)"),
    (["--latency-budget-ms", "-1"], "--latency-budget-ms must be a number above 0"),
    (["--latency-budget", "0.1", "--latency-budget-ms", "1"], "give one of them"),
])
def test_bad_budgets_exit_2(argv, message, capsys):
    from tests.conftest import argparse_error
    assert message in argparse_error(part5_budget.main, argv, capsys)


def test_a_model_with_no_removable_conv_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="a")(inputs)
    x = keras.layers.LayerNormalization()(x)     # over the channels: they stay whole
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="no conv whose filters can be removed"):
        search.space(model, (1.0, 0.5), (None,))


def test_the_committed_reference_s_search_ranks_its_front_first():
    """On the committed run's stored tables (blocks, losses, line), the search
    over groups ranks first at budget 0.1 the configuration the committed front
    holds there: on the reference's chain it finds what the chain's shortest
    path found (results/probes.json "search_over_groups")."""
    import json
    import os

    from common import models
    with open(os.path.join(cli.REPO_ROOT, "results", "part5_budget.json")) as f:
        committed = json.load(f)["runs"][0]
    settings = committed["settings"]
    reference = models.load_classifier(os.path.join(cli.REPO_ROOT, "models", "reference.keras"))
    predict = search.Predictor(search.space(reference, settings["keeps"], settings["ranks"]),
                               committed["blocks"], committed["sensitivity"],
                               committed["calibration"])
    budget = 0.1 * committed["precision"]["float32"]["median"]
    (row,) = [r for r in committed["front"] if r["budget"] == 0.1]
    first = predict.candidates(budget, settings["resolution_steps"])[0]
    assert search.configurations_key(first) == row["configuration"]
    assert predict.seconds(first) <= budget


def test_the_front_figure_names_searched_points_below_its_axis(tmp_path, monkeypatch):
    from common import plots_deployment
    drawn = {}
    monkeypatch.setattr(plots_deployment, "save", lambda fig, path: drawn.setdefault("fig", fig))
    front = [{"budget": b, "precision": "int8", "test_accuracy": acc,
              "latency": {"ratio": ratio}, "layers": {}}
             for b, acc, ratio in ((0.5, 0.882, 0.284), (0.3, 0.882, 0.284), (0.1, 0.744, 0.1))]
    originals = [{"family": "original", "precision": p, "sparse": False, "test_accuracy": 0.882,
                  "latency": {"1": {"ratio": r}}} for p, r in (("float32", 1.0), ("int8", 0.28))]
    run = {"front": front, "settings": {"machine": machine.identity(), "seed": 0}}
    plots_deployment.plot_budget_front(run, {"models": originals}, str(tmp_path / "f.png"))
    ax = drawn["fig"].axes[0]
    assert ax.get_ylim()[0] > 0.744                      # the 0.1 point is off the axis ...
    footnote = next(t.get_text() for t in drawn["fig"].texts if t.get_gid() == "footnote")
    assert "searched ≤0.1 (74.4%)" in footnote.replace("\n", " ")   # ... and named below it
    labels = [t.get_text() for t in ax.texts]
    assert "≤0.3, ≤0.5" in labels and "≤0.5" not in labels  # one point, both budgets
