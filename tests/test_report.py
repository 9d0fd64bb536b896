"""python common/report.py: tables of any output folder's runs."""

import os

import pytest

from common import report
from common.results import ResultsStore, settings_label


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


def test_the_published_table_sets_our_rows_beside_theirs_by_hand():
    from common import report
    run = {"settings": {"fine_tune": {"epochs": 10}},
           "original": {"test_accuracy": 0.8800},
           "finetuned": [{"flops_reduction": 0.531, "criterion": "l1", "allocation": "global",
                          "flops_ratio": 0.5, "test_accuracy": 0.8790,
                          "model": "resnet56/models/structured_53.1.keras"}],
           "litert_timings": [{"label": "Some CPU", "machine": {"cpu": "Some CPU"},
                               "models": {"-53.1%": {"ratio": 0.5}}}]}
    table = report.published_table(run, {"structured_53.1.keras": 0.8750})
    assert "| DepGraph (group_sl) (published) | 93.53% | 93.77% | +0.24 | 2.13× |" in table
    assert ("| ours: filters removed (l1, global, 10 epochs fine-tuned) | 88.00% | 87.90% "
            "| -0.10 | 2.00× | 0.500 (2.00× faster; Some CPU) |") in table
    assert "| ours: the same architecture from scratch (Scratch-B) | 88.00% | 87.50% | -0.50 |" \
        in table
