"""python common/report.py: tables of any output folder's runs."""

import os

import pytest

from common import report
from common.results import ResultsStore, settings_label, write_json


def part1_run(accuracy):
    epochs = [{"epoch": e, "test_accuracy": accuracy, "seconds": 60.0} for e in range(1, 11)]
    return {"experiments": {"baseline": {"epochs": epochs, "complete": True,
                                          "final_test_accuracy": accuracy}}}


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        report.main(["--help"])
    assert info.value.code == 0 and "--output-dir" in capsys.readouterr().out


def test_every_run_of_an_output_folder_is_tabulated(tmp_path, capsys):
    os.makedirs(tmp_path / "results")
    store = ResultsStore(str(tmp_path / "results" / "part1.json"))
    for seed, accuracy in ((0, 0.5), (1, 0.25)):
        store.update({"seed": seed}, lambda run, a=accuracy: run.update(part1_run(a)))
    assert report.main(["--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "50.00%" in out and "25.00%" in out  # each run's final accuracy
    assert f"run-{settings_label({'seed': 1})}" in out and "run 2 of 2" in out


def test_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert report.run_main(report.main, ["--output-dir", str(tmp_path)]) == 2
    assert "no results/part*.json" in capsys.readouterr().err


def test_the_file_runs_from_any_folder(tmp_path):
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(report.__file__), "report.py")
    done = subprocess.run([sys.executable, script, "--output-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no results/part*.json" in done.stderr  # not an ImportError


def structured_run(seed, base, pruned, litert=True):
    return {"settings": {"fine_tune": {"epochs": 10}, "seed": seed, "model_sha256": "abc"},
            "meta": {"model": "models/resnet56.keras"},
            "original": {"test_accuracy": base},
            "finetuned": [{"flops_reduction": 0.531, "criterion": "l1", "allocation": "global",
                           "flops_ratio": 0.5, "test_accuracy": pruned, "params": 400_000,
                           "validation_accuracy_fine_tuned": pruned,
                           "model": "resnet56/models/structured_53.1.keras"}],
            "litert_timings": [{"label": "Some CPU", "machine": {"cpu": "Some CPU"},
                                "models": {"-53.1%": {"ratio": 0.5}}}] if litert else []}


def deployed(name, precision, ratio, size, sparse=False):
    return {"name": f"{name} {precision}{' sparse' if sparse else ''}", "precision": precision,
            "sparse": sparse, "bytes": size, "latency": {"1": {"ratio": ratio}}}


def test_the_published_table_sets_our_rows_beside_theirs_by_hand():
    base, rows, timed = report.resnet56_rows(structured_run(0, 0.8800, 0.8790),
                                             {"structured_53.1.keras": {"test_accuracy": 0.8750}})
    table = report.published_table(base, rows, timed)
    assert "| DepGraph (group_sl) (published) | 93.53% | 93.77% | +0.24 | 2.13× |" in table
    assert ("| ours: filters removed (l1, global, 10 epochs of fine-tuning) | 88.00% | 87.90% "
            "| -0.10 | 2.00× | 0.500 (2.00× faster) | — | — |") in table
    assert "| ours: the same architecture from scratch (Scratch-B) | 88.00% | 87.50% | -0.50 |" \
        in table
    assert "on Some CPU" in table


def test_another_recipe_on_the_same_architecture_gets_its_time_not_its_bytes():
    def run(pruned, filters, **recipe):
        made = structured_run(0, 0.8800, pruned)
        made["settings"]["fine_tune"] = {"epochs": 10, **recipe}
        made["finetuned"][0]["filters"] = {"stem_conv": filters}
        return made
    part4 = {"settings": {"machine": {"cpu": "Other CPU", "features": ["avx2"]}},
             "models": [deployed("structured_53.1", "float32", 0.4, 4000),
                        deployed("structured_53.1", "int8", 0.1, 1000)]}
    later = [run(0.8810, 8, epochs=15), run(0.8820, 8, peak_learning_rate=0.8),
             run(0.8900, 12, epochs=20)]                 # another architecture: no row
    base, rows, timed = report.resnet56_rows(run(0.8790, 8), part4=part4, later=later)
    table = report.published_table(base, rows, timed)
    assert ("| ours: filters removed (l1, global, 10 epochs of fine-tuning) | 88.00% | 87.90% "
            "| -0.10 | 2.00× | 0.400 (2.50× faster) | 0.100 (10.00× faster) | 1,000 |") in table
    assert ("| ours: filters removed (l1, global, 15 epochs of fine-tuning) | 88.00% | 88.10% "
            "| +0.10 | 2.00× | 0.400 (2.50× faster) | 0.100 (10.00× faster) | — |") in table
    assert ("| ours: filters removed (l1, global, 10 epochs of fine-tuning, peak learning rate "
            "0.8) | 88.00% | 88.20% | +0.20 | 2.00× | 0.400 (2.50× faster) | 0.100 (10.00× faster) "
            "| — |") in table
    assert "89.00%" not in table and len(rows) == 3


def test_part_4s_run_gives_float32_int8_and_the_smallest_int8_file():
    part4 = {"settings": {"machine": {"cpu": "Other CPU", "features": ["avx2"]}},
             "models": [deployed("original", "float32", 1.0, 16000),
                        deployed("original", "int8", 0.3, 4000),
                        deployed("structured_53.1", "float32", 0.4, 4000),
                        deployed("structured_53.1", "int8", 0.1, 1000),
                        deployed("pruned_90", "float32", 1.0, 4000),
                        deployed("pruned_90", "int8", 0.25, 1000),
                        deployed("pruned_90", "int8", 0.26, 300, sparse=True)]}
    part2 = {"finetune": [{"sparsity": 0.9, "test_accuracy": 0.87}]}
    part5 = {"settings": {"model_sha256": "b" * 64},
             "front": [{"budget": 0.1, "precision": "int8", "test_accuracy": 0.86,
                        "flops_ratio": 0.25, "model_sha256": "c" * 64},
                       {"budget": 0.5, "precision": "int8", "test_accuracy": 0.88,
                        "flops_ratio": 1.0, "model_sha256": "b" * 64}]}
    base, rows, timed = report.resnet56_rows(structured_run(0, 0.88, 0.879), part2=part2,
                                             part5=part5, part4=part4)
    assert timed.startswith("Other") and [r["family"] for r in rows] == [
        "original", "structured", "pruned", "search", "search"]
    original, structured, pruned, int8_alone, search = rows
    assert "the base" in int8_alone["method"] and "the base" not in search["method"]
    assert (original["accuracy"], original["macs"], original["int8"]) == (0.88, 1.0, 0.3)
    assert (structured["float32"], structured["int8"], structured["bytes"]) == (0.4, 0.1, 1000)
    assert (pruned["macs"], pruned["int8"], pruned["bytes"]) == (1.0, 0.25, 300)
    assert search["macs"] == 4.0 and "float32" not in search       # not deployed by Part 4


def test_a_part_4_run_under_way_is_tabulated():
    """A flatbuffer converted but not yet evaluated or timed (Part 4 writes as it goes)."""
    row = {"name": "original float32", "family": "original", "precision": "float32",
           "sparse": False, "bytes": 3000, "gzip_bytes": 2000}
    table = report.part4_table({"models": [row]})
    assert table.splitlines()[-1] == "| original | float32 | — | — | not timed | | | 3,000 | 2,000 |"


def test_the_spread_over_seeds_by_hand(tmp_path, capsys):
    runs = {0: structured_run(0, 0.880, 0.878), 1: structured_run(1, 0.884, 0.879),
            2: structured_run(2, 0.876, 0.877)}
    table = report.seeds_table(runs, 0.531)
    # bases 88.0, 88.4, 87.6: mean 88.0, sd 0.4; deltas -0.2, -0.5, +0.1: mean -0.2, sd 0.3
    assert ("| mean ± sd | 88.00 ± 0.40% (n = 3) | 87.80 ± 0.10% (n = 3) | -0.20 ± 0.30 (n = 3) |"
            in table)
    # a seed whose base is trained but not yet pruned: the base counts, the row is a dash;
    # bases 88.0, 88.4, 87.6, 88.8: mean 88.2, sd 0.516
    table = report.seeds_table(runs, 0.531, bases={3: 0.888})
    assert "| 3 | 88.80% | — | — |" in table
    assert "| mean ± sd | 88.20 ± 0.52% (n = 4) | 87.80 ± 0.10% (n = 3) |" in table
    for seed, run in runs.items():                      # the folder layout of resnet56/
        folder = tmp_path / (f"seed{seed}" if seed else "")
        os.makedirs(folder / "results", exist_ok=True)
        ResultsStore(str(folder / "results" / "part2_structured.json")).update(
            run["settings"], lambda stored, run=run: stored.update(
                {k: v for k, v in run.items() if k != "settings"}))
    os.makedirs(tmp_path / "seed3" / "results")       # its base trained, Part 2 under way
    resnet = {"experiments": {"resnet56": {"complete": True, "final_test_accuracy": 0.888}}}
    ResultsStore(str(tmp_path / "seed3" / "results" / "part1.json")).update(
        {"seed": 3}, lambda stored: stored.update(resnet))
    ResultsStore(str(tmp_path / "seed3" / "results" / "part2_structured.json")).update(
        {"seed": 3}, lambda stored: stored.update({"sensitivity": {}}))
    longer = structured_run(0, 0.880, 0.890)             # seed 0 fine-tuned longer
    longer["settings"]["fine_tune"] = {"epochs": 20}
    faster = {seed: structured_run(seed, base, pruned)  # seeds 0 and 1 at a higher peak
              for seed, base, pruned in ((0, 0.880, 0.886), (1, 0.884, 0.885))}
    for seed, run in faster.items():
        run["settings"]["fine_tune"] = {"epochs": 10, "peak_learning_rate": 0.8,
                                        "precision": ("mixed_bfloat16", "float32")[seed]}
    for folder, run in (("", longer), ("", faster[0]), ("seed1", faster[1])):
        ResultsStore(str(tmp_path / folder / "results" / "part2_structured.json")).update(
            run["settings"], lambda stored, run=run: stored.update(
                {k: v for k, v in run.items() if k != "settings"}))
    # Scratch-B of seeds 0 and 2's architectures (each seed's own 10-epoch row's
    # model); seed 1's folder holds one of another architecture
    # (seeds 0 and 2 trained in different precisions)
    for folder, name, accuracy, precision in (
            ("", "structured_53.1", 0.884, "mixed_bfloat16"),
            ("seed2", "structured_53.1", 0.877, "float32"),
            ("seed1", "structured_61.1", 0.9, "float32")):
        os.makedirs(tmp_path / folder / "models", exist_ok=True)
        write_json(str(tmp_path / folder / "models" / f"scratch-{name}.json"),
                   {"config": {"architecture": f"resnet56/models/{name}.keras",
                               "precision": precision}, "test_accuracy": accuracy})
    figure = tmp_path / "published.png"
    assert report.main(["--output-dir", str(tmp_path), "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "| mean ± sd | 88.20 ± 0.52% (n = 4) |" in out
    assert out.count("ResNet-56 beside the published rows") == 1   # the file's first run
    # one spread per fine-tuning recipe, and Scratch-B's; at 20 epochs only seed
    # 0 has its row, the other seeds' bases (from their 10-epoch runs and seed
    # 3's Part 1) still count
    assert out.count("Over seeds") == 4
    first, scratch_table, longer_table, faster_table = out.split("Over seeds")[1:]
    # Scratch-B against each seed's base: +0.40 and +0.10
    assert "| 0 (trained in mixed_bfloat16) | 88.00% | 88.40% | +0.40 |" in scratch_table
    assert "| 1 | 88.40% | — | — |" in scratch_table
    assert "| 2 (trained in float32) | 87.60% | 87.70% | +0.10 |" in scratch_table
    assert "| mean ± sd | 88.20 ± 0.52% (n = 4) | 88.05 ± 0.49% (n = 2) | +0.25 ± 0.21 (n = 2) |" \
        in scratch_table
    assert "10 epochs of fine-tuning\n" in first and "| 0 | 88.00% | 87.80% |" in first
    assert "| 1 | 88.40% | 87.90% | -0.50 |" in first
    # the same epochs at another peak: its own table, whatever precision each seed
    # ran in; as the seeds' precisions differ, each row names its own
    assert "10 epochs of fine-tuning, peak learning rate 0.8\n" in faster_table
    assert "| 0 (fine-tuned in mixed_bfloat16) | 88.00% | 88.60% | +0.60 |" in faster_table
    assert "| 1 (fine-tuned in float32) | 88.40% | 88.50% | +0.10 |" in faster_table
    assert "| 2 | 87.60% | — | — |" in faster_table       # no run of this recipe
    assert "20 epochs of fine-tuning" in longer_table and "| 0 | 88.00% | 89.00% | +1.00 |" in longer_table
    assert "| 1 | 88.40% | — | — |" in longer_table
    assert "| mean ± sd | 88.20 ± 0.52% (n = 4) | — | — |" in longer_table
    assert figure.stat().st_size > 10_000


def test_a_figure_without_a_resnet56_run_is_one_line(tmp_path, capsys):
    os.makedirs(tmp_path / "results")
    ResultsStore(str(tmp_path / "results" / "part1.json")).update(
        {"seed": 0}, lambda run: run.update(part1_run(0.5)))
    assert report.run_main(report.main, ["--output-dir", str(tmp_path), "--figure",
                                         str(tmp_path / "f.png")]) == 2
    assert "--figure: no Part 2 structured run on a resnet56.keras" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_the_published_figure_names_our_models_below_its_axis(tmp_path, monkeypatch):
    from common import plots_compression
    drawn = {}
    monkeypatch.setattr(plots_compression, "save", lambda fig, path, **_: drawn.setdefault("f", fig))
    rows = [{"family": "structured", "method": "filters removed", "accuracy": 0.877, "macs": 2.13,
             "float32": 0.7, "int8": 0.2},
            {"family": "search", "method": "searched for 0.1", "accuracy": 0.744, "macs": 15.2}]
    plots_compression.plot_published(report.PUBLISHED_RESNET56, 0.882, rows, "a CPU",
                                     str(tmp_path / "p.png"))
    acc_ax = drawn["f"].axes[0]
    low, high = acc_ax.get_ylim()
    assert low < -0.5 and -13.8 < low and high >= 0.24           # DepGraph's +0.24 is on it
    footnote = next(t.get_text() for t in drawn["f"].texts if t.get_gid() == "footnote")
    assert "searched for 0.1: -13.80 points at 15.2×" in footnote.replace("\n", " ")
    assert "filters removed:" not in footnote


def test_each_machine_gets_its_own_table_and_figure():
    def on(cpu, part):
        return {"settings": {"machine": {"cpu": cpu, "features": []}}, "part": part}
    part4s, part5s = [on("A", 4), on("B", 4)], [on("B", 5), on("C", 5)]
    pairs = report.per_machine(part4s, part5s)
    assert [(p4 and p4["settings"]["machine"]["cpu"], p5 and p5["settings"]["machine"]["cpu"])
            for p4, p5 in pairs] == [("A", None), ("B", "B"), (None, "C")]
    assert report.per_machine([], []) == [(None, None)]
    assert report.figure_path("f/pub.png", "Intel Xeon, AMX", True) == "f/pub.png"
    assert report.figure_path("f/pub.png", "Intel Xeon, AMX", False) == \
        "f/pub-intel-xeon-amx.png"


def test_a_figure_footnote_names_the_fine_tuning_recipe():
    from common.plots import settings_line
    recipe = {"epochs": 10, "precision": "float32"}
    run = {"settings": {"seed": 2, "fine_tune": dict(recipe, peak_learning_rate=0.8)}}
    assert "fine-tuned 10 epochs at peak learning rate 0.8 (float32)" in settings_line(run)
    older = {"settings": {"fine_tune": recipe}}  # rows stored before the rate was a setting
    assert "fine-tuned 10 epochs (float32)" in settings_line(older)
    quick = {"settings": {"fine_tune": dict(recipe, epochs=1)}}
    assert "fine-tuned 1 epoch (float32)" in settings_line(quick)
