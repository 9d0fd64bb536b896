"""A newcomer's try of the README's quick start leaves `git status` clean."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, ".git")) or not shutil.which("git"),
                    reason="needs a git checkout")
def test_the_quick_start_on_a_fresh_clone_changes_no_tracked_file(tmp_path, tiny_cifar):
    clone = tmp_path / "clone"
    clone.mkdir()
    for path in git("ls-files", cwd=REPO).splitlines():  # the tracked files as they are now
        if os.path.isfile(os.path.join(REPO, path)):
            os.makedirs(clone / os.path.dirname(path), exist_ok=True)
            shutil.copy2(os.path.join(REPO, path), clone / path)
    git("init", "-q", cwd=clone)
    git("add", "-A", cwd=clone)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone", cwd=clone)
    # The README's quick start, on the tests' tiny data and fewer images.
    done = subprocess.run([sys.executable, "part1_cnn.py", "--data-dir", tiny_cifar[0],
                           "--experiments", "baseline", "maxpool", "--epochs", "1",
                           "--train-limit", "60", "--batch-size", "30"],
                          cwd=clone, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "writing to runs/part1-" in done.stdout
    assert git("status", "--porcelain", cwd=clone) == ""
    (folder,) = (clone / "runs").iterdir()
    assert (folder / "figures" / "part1_step6_maxpool.png").exists()
    assert (folder / "results" / "part1.json").exists()
