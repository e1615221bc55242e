"""The core's check of h-space files: a damaged or foreign file is a ValueError that names the file."""
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from hspace_core import Direction, HTrajectory


@pytest.fixture
def trajectory_file(tmp_path):
    path = str(tmp_path / "h.safetensors")
    HTrajectory((999, 500), torch.randn(2, 1, 4, 2, 2), fingerprint="arch/w").save(path)
    return path


def _write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _damaged(tmp_path, trajectory_file):
    good = open(trajectory_file, "rb").read()
    return {
        "empty": _write(tmp_path / "empty.safetensors", b""),
        "truncated": _write(tmp_path / "truncated.safetensors", good[: len(good) // 2]),
        "random": _write(tmp_path / "random.safetensors", os.urandom(4096)),
        "huge header": _write(tmp_path / "huge.safetensors", struct.pack("<Q", 2**40) + b"{}"),
    }


def test_damaged_files_are_named_and_called_invalid(tmp_path, trajectory_file):
    for what, path in _damaged(tmp_path, trajectory_file).items():
        with pytest.raises(ValueError) as error:
            HTrajectory.load(path)
        assert path in str(error.value) and "not a valid h-space h trajectory file" in str(error.value), what
        with pytest.raises(ValueError, match="not a valid h-space direction file"):
            Direction.load(path)


def _with_meta(tmp_path, name, hspace, tensors=None):
    path = str(tmp_path / name)
    save_file(tensors or {"h": torch.zeros(1, 1, 1, 1, 1)}, path, metadata={"hspace": hspace})
    return path


def test_metadata_not_json_or_missing_keys(tmp_path):
    not_json = _with_meta(tmp_path, "a.safetensors", "{not json")
    with pytest.raises(ValueError, match="metadata is not JSON"):
        HTrajectory.load(not_json)
    no_fp = _with_meta(tmp_path, "b.safetensors", json.dumps({"kind": "h_trajectory", "timesteps": [1], "branches": ["single"]}))
    with pytest.raises(ValueError, match="missing fingerprint"):
        HTrajectory.load(no_fp)
    no_delta = _with_meta(tmp_path, "c.safetensors", json.dumps({"kind": "direction", "form": "global", "fingerprint": "",
                                                                  "timesteps": []}))
    with pytest.raises(ValueError, match="missing delta"):
        Direction.load(no_delta)
    plain = str(tmp_path / "plain.safetensors")
    save_file({"x": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="no 'hspace' metadata"):
        HTrajectory.load(plain)


def test_wrong_kind_says_which_kind_to_pick(trajectory_file):
    with pytest.raises(ValueError, match="pick a direction file"):
        Direction.load(trajectory_file)


def test_good_file_still_loads(trajectory_file):
    assert HTrajectory.load(trajectory_file).timesteps == (999, 500)


def test_other_model_names_both_fingerprints_and_the_hint(trajectory_file):
    with pytest.raises(ValueError) as error:
        HTrajectory.load(trajectory_file, expect_fingerprint="arch/other")
    assert "arch/w" in str(error.value) and "arch/other" in str(error.value) and "use the model" in str(error.value)


def test_site_is_saved_and_files_without_one_are_middle(tmp_path):
    traj = HTrajectory((999, 500), torch.randn(2, 1, 4, 4, 4), site="up1")
    direction = Direction("global", torch.randn(4, 4, 4), name="d", site="up1")
    traj.save(str(tmp_path / "t.safetensors"))
    direction.save(str(tmp_path / "d.safetensors"))
    assert HTrajectory.load(str(tmp_path / "t.safetensors")).site == "up1"
    assert Direction.load(str(tmp_path / "d.safetensors")).site == "up1"
    # a file of an older version: the same metadata with no "site" key
    old = {"kind": "direction", "format_version": "1", "form": "global", "timesteps": [], "fingerprint": "",
           "name": "old", "extra": {}, "scale": 1.0, "h_shape": [4, 4, 4]}
    save_file({"delta": torch.randn(4, 4, 4)}, str(tmp_path / "old.safetensors"), metadata={"hspace": json.dumps(old)})
    assert Direction.load(str(tmp_path / "old.safetensors")).site == "middle"
    assert HTrajectory((999,), torch.randn(1, 1, 4, 2, 2)).site == "middle"
    with pytest.raises(ValueError, match="h site 'bottom' is unknown"):
        Direction("global", torch.randn(4, 4, 4), site="bottom")
