"""The core's check of h-space files: a damaged or foreign file is a ValueError that names the file."""
import json
import logging
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


# --- every metadata field is checked by name, type and range (file_format.checked_fields) ---

def _retagged(tmp_path, file_name: str, kind: str = "direction", **fields) -> str:
    """A good direction (or trajectory) file whose metadata has ``fields`` instead (None: the key removed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    source = str(tmp_path / f"source_{kind}.safetensors")
    if kind == "direction":
        Direction("per_timestep", torch.randn(2, 4, 2, 2), (999, 500), fingerprint="arch/w", name="d").save(source)
    else:
        HTrajectory((999, 500), torch.randn(2, 1, 4, 2, 2), fingerprint="arch/w").save(source)
    with safe_open(source, "pt") as f:
        meta = dict(f.metadata())
    meta["hspace"] = json.dumps({**json.loads(meta["hspace"]), **fields})
    path = str(tmp_path / file_name)
    save_file(load_file(source), path, metadata=meta)
    return path


@pytest.mark.parametrize("fields, phrase", [
    ({"extra": {"train_steps": -6}}, r"'extra' \(\{\"train_steps\": -6\}\) has train_steps -6"),
    ({"extra": {"train_steps": "abc"}}, "has train_steps 'abc'"),
    ({"extra": {"train_steps": 4.5}}, "has train_steps 4.5"),
    ({"extra": {"train_steps": True}}, "has train_steps True"),
    ({"extra": ["a"]}, "'extra'.*must be a JSON object"),
    ({"scale": 1e30}, r"'scale' \(1e\+30\) must be a finite number in \[−10000, 10000\]"),
    ({"scale": float("nan")}, "'scale' \\(NaN\\)"),
    ({"scale": "2"}, "'scale'"),
    ({"timesteps": [999, -1]}, "'timesteps'.*whole timesteps"),
    ({"timesteps": [999, 500.5]}, "'timesteps'"),
    ({"form": "sideways"}, "'form'"),
    ({"fingerprint": 7}, "'fingerprint'.*must be text"),
    ({"name": ["x"]}, "'name'"),
    ({"made_with": 3}, "'made_with'"),
])
def test_a_tampered_direction_field_is_refused_naming_the_file_and_the_field(tmp_path, fields, phrase):
    path = _retagged(tmp_path, "tampered.safetensors", **fields)
    with pytest.raises(ValueError, match=phrase) as caught:
        Direction.load(path)
    assert str(caught.value).startswith(path), caught.value


@pytest.mark.parametrize("fields, phrase", [({"timesteps": ["999", "500"]}, "'timesteps'"),
                                            ({"branches": ["cond", "sideways"]}, "'branches'"),
                                            ({"branches": []}, "'branches'"), ({"source": 1}, "'source'"),
                                            ({"timesteps": [999]}, "1 timesteps but 2 h tensors")])
def test_a_tampered_trajectory_field_is_refused_naming_the_file(tmp_path, fields, phrase):
    path = _retagged(tmp_path, "tampered.safetensors", "trajectory", **fields)
    with pytest.raises(ValueError, match=phrase) as caught:
        HTrajectory.load(path)
    assert path in str(caught.value), caught.value


def test_a_null_made_with_reads_as_unknown_with_a_log_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hspace"):
        direction = Direction.load(_retagged(tmp_path, "null.safetensors", made_with=None))
        trajectory = HTrajectory.load(_retagged(tmp_path, "null_t.safetensors", "trajectory", made_with=None))
    assert direction.made_with == ""
    assert trajectory.made_with == "2 steps, t = 999 … 500"  # its grid, as for a file without the record
    assert sum("made_with as null" in r.getMessage() for r in caplog.records) == 2
    again = str(tmp_path / "again.safetensors")
    direction.save(again)
    assert Direction.load(again).made_with == ""


def test_good_fields_load_as_saved(tmp_path):
    path = _retagged(tmp_path, "ok.safetensors", extra={"train_steps": 40}, scale=-2.5)
    direction = Direction.load(path)
    assert direction.step_scale(20) == 2.0 and direction.scale == -2.5 and direction.timesteps == (999, 500)


def test_a_direction_whose_site_record_does_not_fit_its_delta_blames_the_record(tmp_path):
    direction = Direction.load(_retagged(tmp_path, "up1.safetensors", site="up1"))
    with pytest.raises(ValueError, match=r"up1.safetensors records the h site 'up1', where this model's h is "
                                         r"\(8, 4, 4\), but its Δh is \(4, 2, 2\): the file's site record"):
        direction.at(torch.zeros(1, 8, 4, 4), 999)


def test_metadata_and_settings_nested_beyond_the_recursion_limit_are_refused_by_file_name(tmp_path):
    from hspace_core.checkpoints import settings_beside

    deep = "[" * 100_000 + "]" * 100_000
    path = str(tmp_path / "deep.safetensors")
    save_file({"h": torch.zeros(1, 1, 1, 1, 1)}, path, metadata={"hspace": deep})
    with pytest.raises(ValueError, match="deep.safetensors is not a valid h-space h trajectory file .*nests too "
                                         "deeply"):
        HTrajectory.load(path)
    with open(tmp_path / "deep.json", "w") as f:
        f.write(deep)
    with pytest.raises(ValueError, match="^deep.json nests too deeply to read .*: fix or remove it"):
        settings_beside(path)


def test_a_pixel_unet_folder_with_deeply_nested_json_is_named_not_a_recursion_error(pack, tmp_path):
    import shutil

    _, pixel_model = pack
    folder = tmp_path / "deep-ddpm"
    shutil.copytree("models/hspace-shapes-ddpm", folder)
    deep = "[" * 100_000 + "]" * 100_000
    (folder / "scheduler" / "scheduler_config.json").write_text(deep)
    with pytest.raises(ValueError, match="scheduler_config.json nests too deeply"):
        pixel_model.load_pixel_unet_folder(str(folder))
    bare = tmp_path / "bare"  # a bare UNet2DModel folder (config.json at its top) is listed by reading its config
    bare.mkdir()
    (bare / "config.json").write_text(deep)
    assert not pixel_model.is_pixel_unet_folder(str(bare))  # not listed (a log line says why); no RecursionError


def test_an_official_delta_h_file_with_nan_is_refused_naming_the_file(tmp_path):
    from hspace_core import TimeEmbedding, load_official_asyrp

    path = str(tmp_path / "delta_h_ngen40.pth")
    torch.save({"999": torch.full((8, 4, 4), float("nan")), "500": torch.zeros(8, 4, 4)}, path)
    with pytest.raises(ValueError, match=r"delta_h_ngen40.pth: The direction contains NaN or inf"):
        load_official_asyrp(path, TimeEmbedding(16, 32, flip_sin_to_cos=False, freq_shift=1))


def test_a_trajectory_whose_site_record_does_not_fit_its_h_blames_the_record(tmp_path):
    from hspace_core import content_injection

    content = HTrajectory.load(_retagged(tmp_path, "up1_t.safetensors", "trajectory", site="up1"))
    inject = content_injection(content, 0.5)
    with pytest.raises(ValueError, match=r"up1_t.safetensors records the h site 'up1', where the style's h is "
                                         r"\(8, 4, 4\), but its h is \(4, 2, 2\): the file's site record"):
        inject(torch.zeros(1, 8, 4, 4), 999, "single")
