"""The t widgets on Flux through a real ComfyUI server (docs/transformers.md, "One rule for the t widgets"): H-Space
Auto Schedule's INT t_edit is a t widget value (0 … 999) naming the entry it found of Flux's 10000-entry σ table, so
it feeds H-Space Asyrp Edit's t_edit directly, and that edit (window t_edit) is bit for bit the edit its percent
output gives (window percent, end_percent = edit_end_percent): the same steps are edited.  One prompt on the tiny
Flux (TinyFluxCheckpointLoader): three generated latents captured, a PCA direction, Auto Schedule (LPIPS with random
weights, thresholds 0.01: plumbing only) on one of them, three Asyrp Edits from it."""
import numpy as np
import pytest

from e2e_helpers import node as _node, png, save_decoded, tiny_flux_images
from harness.server import error_message

pytestmark = pytest.mark.e2e
SIZE = 64  # pixels: an 8×8 latent, a 4×4 patch grid
PROBES = 4  # Flux entries 0, 3333, 6666, 9999: widget values 0, 333, 666, 999


def _graph() -> dict:
    common = dict(model=["ckpt", 0], positive=["guided", 0], steps=4, cfg=1.0, edit_branches="cond")
    edit = dict(x_T=["one", 0], direction=["pca", 1], strength_sweep="", seed=0, allow_other_model=False, **common)
    g = {
        **tiny_flux_images(SIZE, 3),
        "capture": _node("HSpaceCapture", x_T=["images", 0], **common),
        "pca": _node("HSpacePCADirections", trajectory=["capture", 0], k=1, component=0, form="global",
                     normalisation="position", name="pc"),
        "one": _node("LatentFromBatch", samples=["images", 0], batch_index=0, length=1),
        "auto": _node("HSpaceAutoSchedule", model=["ckpt", 0], latent=["one", 0], vae=["ckpt", 2],
                      edit_threshold=0.01, boost_threshold=0.01, text_cosine=1.0, probes=PROBES,
                      lpips_backbone="alex (random weights, testing only)", seed=0, cfg=1.0, edit_branches="cond",
                      positive=["guided", 0]),
        "by_t": _node("HSpaceAsyrpEdit", strength=20.0, window="t_edit", t_edit=["auto", 0], start_percent=0.0,
                      end_percent=0.6, **edit),
        "by_percent": _node("HSpaceAsyrpEdit", strength=20.0, window="percent", t_edit=400, start_percent=0.0,
                            end_percent=["auto", 2], **edit),
        "plain": _node("HSpaceAsyrpEdit", strength=0.0, window="t_edit", t_edit=["auto", 0], start_percent=0.0,
                       end_percent=0.6, **edit),
        **{f"show_{k}": _node("PreviewAny", source=["auto", k]) for k in range(4)},
    }
    for name in ("by_t", "by_percent", "plain"):
        save_decoded(g, name, [name, 0], f"h6/flux_{name}")
    return g


def test_auto_schedules_t_edit_feeds_asyrp_edits_t_edit_on_flux(comfy):
    entry = comfy.run(_graph())
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    t_edit, t_boost, edit_end, boost_start = (entry["outputs"][f"show_{k}"]["text"][0] for k in range(4))
    # widget values of the probed entries (before this rule: 3333 of 10000, which no t widget takes)
    assert int(t_edit) in (333, 666) and 0 <= int(t_boost) <= int(t_edit), (t_edit, t_boost)
    assert 0.0 < float(edit_end) < 1.0
    by_t, by_percent, plain = (png(comfy.images(entry, f"save_{name}")[0]) for name in ("by_t", "by_percent", "plain"))
    assert by_t.shape == (SIZE, SIZE, 3)
    assert np.array_equal(by_t, by_percent)  # t_edit's entry and edit_end_percent's window hold the same steps
    assert np.abs(by_t.astype(float) - plain).mean() > 0.5  # and the edit acts there
