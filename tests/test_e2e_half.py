"""End to end in half precision: ComfyUI started with --fp16-unet / --bf16-unet runs the pixel sample workflows and
the SD style-mixing workflow with no dtype error and no NaN, and every saved image (reconstructions included) stays
within a measured margin of the float32 server's (docs/precision.md).

On the CPU, ComfyUI keeps its own SD U-Net's weights in the flagged dtype but computes in float32 (manual cast: it
never computes in half on a CPU); the pack's pixel U-Net runs wholly in the flagged dtype."""
import os

import numpy as np
import pytest

from e2e_helpers import ROOT, fresh, load_prompt, overrides_for, png
from harness.server import STATE, ComfyServer, error_message, extra_args_from_env, prepare_base

pytestmark = pytest.mark.e2e

WORKFLOWS = ["pixel_asyrp_edit", "pixel_content_injection", "interpolation", "sd_style_mixing"]
FLAGS = {"float16": "--fp16-unet", "bfloat16": "--bf16-unet"}
# Mean absolute difference from the float32 server, in 8-bit levels, of the worst saved image of the workflow, with
# about 2× headroom over the measured worst (docs/precision.md: float16 ≤ 0.76 on the pixel workflows and 0 on SD,
# whose test checkpoint is stored in float16 already; bfloat16 ≤ 5.9 and 0.27).
MARGIN = {"float16": {"pixel_asyrp_edit": 2.0, "pixel_content_injection": 2.0, "interpolation": 2.0,
                      "sd_style_mixing": 0.5},
          "bfloat16": {"pixel_asyrp_edit": 12.0, "pixel_content_injection": 8.0, "interpolation": 10.0,
                       "sd_style_mixing": 1.0}}


@pytest.fixture(scope="module", params=list(FLAGS))
def half(request, tmp_path_factory):
    base = str(tmp_path_factory.mktemp(f"comfy-{request.param}"))
    prepare_base(base, os.path.join(STATE, "e2e-models"))
    flags = [*extra_args_from_env(), FLAGS[request.param]]  # a lane's own flags (HSPACE_COMFY_ARGS) stay
    server = ComfyServer(base, os.path.join(base, "server.log"), extra_args=flags).start()
    server.object_info = server.get("/object_info")
    server.dtype = request.param
    try:
        yield server
    finally:
        server.stop()


# Fewer steps than shipped for the pixel workflows (half precision runs slowly on a CPU): the lane stays near 2 min.
PIXEL_OVERRIDES = {"steps": 6, "step": 3}


def _saved(server, name: str) -> dict:
    path = os.path.join(ROOT, "workflows", f"{name}.json")
    prompt = load_prompt(path, server.object_info, None if name.startswith("sd") else {**overrides_for(path),
                                                                                       **PIXEL_OVERRIDES})
    fresh(server)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + server.tail()
    return {f"{node_id}.{k}": png(image).astype(np.float64)
            for node_id, node in prompt.items() if node["class_type"] == "SaveImage"
            for k, image in enumerate(server.images(entry, node_id))}


_float32: dict = {}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_a_sample_workflow_in_half_precision_is_close_to_float32(half, comfy, name):
    if name not in _float32:
        _float32[name] = _saved(comfy, name)
    want, got = _float32[name], _saved(half, name)
    assert got.keys() == want.keys()
    if name != "sd_style_mixing":
        with open(half.log_path) as f:
            assert "The pixel U-Net runs in" in f.read()  # the flag reached the pack's own U-Net
    diffs = {key: float(np.abs(got[key] - want[key]).mean()) for key in want}
    print(half.dtype, name, {k: round(v, 3) for k, v in diffs.items()})
    for key, image in got.items():
        assert image.std() > 1, f"{key} is flat (a NaN turned black?)"
    assert max(diffs.values()) <= MARGIN[half.dtype][name], diffs
