"""One pack for ComfyUI 0.3.75 through the current release (docs/compatibility.md), and the Registry's conventions."""
import fnmatch
import os
import re
import struct
import tomllib

import torch

from harness.tiny import tiny_pixel_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expert_widgets_use_the_schemas_own_flag_where_it_has_one(pack):
    from comfy_api.latest import io
    from hspace_pack.nodes.layer import advanced

    native = hasattr(io.Float.Input("probe"), "advanced")  # ComfyUI 0.33 has it, 0.3.75 does not
    widget = advanced(io.Float.Input("x", default=1.0))
    assert widget.as_dict()["advanced"] is True  # what /object_info sends the editor, either way
    assert ("advanced" in widget.extra_dict) is not native
    if native:
        assert widget.advanced is True


def test_the_pixel_unet_has_its_own_identity_latent_format(pack):
    _, pixel_model = pack
    patcher = pixel_model.pixel_model_patcher(tiny_pixel_unet(size=16), {"prediction_type": "epsilon"})
    latent_format = patcher.model.latent_format
    assert type(latent_format) is pixel_model.PixelSpace
    assert latent_format.latent_channels == 3 and latent_format.spacial_downscale_ratio == 1
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(patcher.model.process_latent_in(x), x) and torch.equal(patcher.model.process_latent_out(x), x)


def test_the_pack_borrows_no_other_models_latent_format():
    for folder, _, files in os.walk(os.path.join(ROOT, "nodes")):
        for name in (f for f in files if f.endswith(".py")):
            text = open(os.path.join(folder, name)).read()
            used = set(re.findall(r"latent_formats\.(\w+)", text))
            assert used <= {"LatentFormat"}, (name, used)


def _comfyignore() -> list[str]:
    lines = open(os.path.join(ROOT, ".comfyignore")).read().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.comfyignore's patterns here are folders ("x/") and names; gitwildmatch reads them so."""
    for p in patterns:
        if p.endswith("/") and (path + "/").startswith(p) or fnmatch.fnmatch(os.path.basename(path), p):
            return True
    return False


def test_the_archive_keeps_the_pack_and_leaves_the_tests_only_files():
    patterns = _comfyignore()
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        includes = tomllib.load(f)["tool"]["comfy"]["includes"]
    kept = ["__init__.py", "nodes/layer/node.py", "hspace_core/ddim.py", "web/advanced_widgets.js", "LICENSE",
            "requirements.txt", "pyproject.toml", "docs/icon.png", "workflows/sd_style_mixing.json",
            "models/hspace-shapes-ddpm/unet/diffusion_pytorch_model.safetensors"]
    for path in kept:
        assert not _ignored(path, patterns) or any(path.startswith(i + "/") for i in includes), path
    for path in ["tests/conftest.py", "harness/server.py", "models/hspace-shapes-ddpm-cond/unet/config.json",
                 "docs/figures/samples.png", "scripts/test.sh"]:
        assert os.path.exists(os.path.join(ROOT, path)), path
        assert _ignored(path, patterns) and not any(path.startswith(i + "/") for i in includes), path


def test_requirements_leave_torch_to_comfyui_and_declare_pillow():
    names = [l.split(">")[0].split("=")[0].strip().lower() for l in open(os.path.join(ROOT, "requirements.txt"))
             if l.strip() and not l.startswith("#")]
    assert "torch" not in names and "torchvision" not in names
    assert {"pillow", "numpy", "diffusers", "safetensors", "lpips", "open_clip_torch"} <= set(names)


def test_the_registry_icon_is_a_small_square_png_in_the_repository():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        icon = tomllib.load(f)["tool"]["comfy"]["Icon"]
    path = os.path.join(ROOT, icon.split("/main/", 1)[1])  # the raw URL of a file on the main branch
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 50_000
    width, height = struct.unpack(">II", data[16:24])
    assert width == height >= 128
