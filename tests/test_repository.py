"""The repository stays slim: no big binaries beyond the shipped model weights (a check on `git ls-files`)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 8 * 2**20
MODEL = "models/hspace-shapes-ddpm/"


def tracked_files() -> list[str]:
    try:
        run = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if run.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in run.stdout.decode().split("\0") if f]


def test_no_tracked_file_over_8_mib_outside_the_model_folder():
    sizes = {f: os.path.getsize(os.path.join(ROOT, f)) for f in tracked_files() if os.path.isfile(os.path.join(ROOT, f))}
    assert sizes, "git ls-files listed nothing"
    big = {f: s for f, s in sizes.items() if s > LIMIT and not f.startswith(MODEL)}
    assert not big, f"tracked files over 8 MiB outside {MODEL}: {big}; keep training state and data out of git"
