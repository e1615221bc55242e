"""Directions on a transformer through a real ComfyUI server (issue 38 item 3), one prompt on the tiny Flux
(TinyFluxCheckpointLoader, harness/comfy_nodes): three generated latents captured (H-Space Capture, taken as x_T:
plumbing only), H-Space PCA Directions of their trajectories, saved (H-Space Save Direction); the Direction Explorer
of the components on one x_T (percent window) beside H-Space Asyrp Edit at strength 0; H-Space Auto Schedule
(LPIPS with random weights) with its INT and percent outputs."""
import numpy as np
import pytest

from e2e_helpers import node as _node, png, tiny_flux_images
from harness.server import error_message

pytestmark = pytest.mark.e2e
SIZE = 64  # pixels: an 8×8 latent, a 4×4 patch grid
STRENGTHS = (-20, 0, 20)


def _graph() -> dict:
    common = dict(model=["ckpt", 0], positive=["guided", 0], steps=4, cfg=1.0, edit_branches="cond")
    window = dict(window="percent", start_percent=0.0, end_percent=0.7, t_edit=400)
    return {
        **tiny_flux_images(SIZE, 3),
        "capture": _node("HSpaceCapture", x_T=["images", 0], **common),
        "pca": _node("HSpacePCADirections", trajectory=["capture", 0], k=2, component=0, form="global",
                     normalisation="position", name="pc"),
        "save_direction": _node("HSpaceSaveDirection", direction=["pca", 1], filename_prefix="h3_flux_pc"),
        "one": _node("LatentFromBatch", samples=["images", 0], batch_index=0, length=1),
        "explore": _node("HSpaceDirectionExplorer", x_T=["one", 0], vae=["ckpt", 2], directions=["pca", 0],
                         strengths=", ".join(map(str, STRENGTHS)), scale=1, seed=0, t_edit_sweep="",
                         allow_other_model=False, **common, **window),
        "save_grid": _node("SaveImage", images=["explore", 0], filename_prefix="h3/flux_explorer"),
        "edit": _node("HSpaceAsyrpEdit", x_T=["one", 0], direction=["pca", 1], strength=0.0, strength_sweep="",
                      seed=0, allow_other_model=False, **common, **window),
        "decode_edit": _node("VAEDecode", samples=["edit", 0], vae=["ckpt", 2]),
        "save_edit": _node("SaveImage", images=["decode_edit", 0], filename_prefix="h3/flux_edit0"),
        "auto": _node("HSpaceAutoSchedule", model=["ckpt", 0], latent=["capture", 1], vae=["ckpt", 2],
                      edit_threshold=0.01, boost_threshold=0.01, text_cosine=1.0, probes=4,
                      lpips_backbone="alex (random weights, testing only)", seed=0, cfg=1.0, edit_branches="cond",
                      positive=["guided", 0]),
        **{f"show_{k}": _node("PreviewAny", source=["auto", k]) for k in range(4)},
    }


def test_pca_explorer_and_auto_schedule_on_flux(comfy):
    entry = comfy.run(_graph())
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    assert entry["outputs"]["save_direction"]["text"][0].startswith("h3_flux_pc")
    grid = png(comfy.images(entry, "save_grid")[0])
    plain = png(comfy.images(entry, "save_edit")[0])
    assert plain.shape == (SIZE, SIZE, 3)
    pad, rows, columns = 2, 2, len(STRENGTHS)  # grids.grid_image: labels left and on top, tiles from the bottom right
    top, left = grid.shape[0] - rows * (SIZE + pad) - pad, grid.shape[1] - columns * (SIZE + pad) - pad
    tile = lambda r, c: grid[top + r * (SIZE + pad):top + r * (SIZE + pad) + SIZE,  # noqa: E731
                             left + c * (SIZE + pad):left + c * (SIZE + pad) + SIZE]
    for r in range(rows):
        # the strength-0 column is the Asyrp Edit's strength 0 (the VAE decodes the grid's six tiles as one batch)
        assert np.abs(tile(r, 1) - plain).max() <= 1, np.abs(tile(r, 1) - plain).max()
        assert np.abs(tile(r, 0) - plain).mean() > 0.5 and np.abs(tile(r, 2) - plain).mean() > 0.5
    t_edit, t_boost, edit_end, boost_start = (entry["outputs"][f"show_{k}"]["text"][0] for k in range(4))
    assert 0 <= int(t_boost) <= int(t_edit) <= 999  # t widget values (Flux: entries ≈ 10·t of its 10000)
    assert 0.0 <= float(boost_start) <= 1.0 and 0.0 <= float(edit_end) <= 1.0
    assert float(edit_end) <= float(boost_start)  # the boost starts at or after the edit window's end
