"""The blueprints (subgraphs/*.json) as ComfyUI serves them (GET /global_subgraphs, app/subgraph_manager.py: 0.3.75 and 0.33.0),
expanded as the editor expands a subgraph node, run on the bundled pixel model at 32² and 12 steps: each does what its
method says (γ = 0 mixes nothing in, strength 0 edits nothing, the reconstruction is the image)."""
import json
import os

import numpy as np
import pytest

from e2e_helpers import ROOT, png
from harness import blueprints

pytestmark = pytest.mark.e2e
STEPS = 12


def _served(comfy) -> dict:
    """{file stem: blueprint} of this pack's entries at /global_subgraphs (their data from /global_subgraphs/<id>)."""
    import urllib.error

    from harness.server import PACK_NAME

    try:
        entries = comfy.get("/global_subgraphs")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            pytest.skip("this ComfyUI has no /global_subgraphs (app/subgraph_manager.py), so no blueprints")
        raise
    ours = {e["name"]: key for key, e in entries.items() if e["info"]["node_pack"] == f"custom_nodes.{PACK_NAME}"}
    return {name: json.loads(comfy.get(f"/global_subgraphs/{key}")["data"]) for name, key in ours.items()}


def _instance(bp: dict, **inputs) -> dict:
    """A prompt node of the blueprint's subgraph node, its knobs at their defaults unless given."""
    return {"class_type": blueprints.subgraph_id(bp), "inputs": {**blueprints.knobs_of(bp), **inputs}}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a.astype(float) - b) ** 2), 1e-12)))


def test_the_blueprints_are_served_and_run(comfy):
    served = _served(comfy)
    shipped = {bp.name: bp for bp in blueprints.BLUEPRINTS}
    assert set(served) == set(shipped)
    for name in served:
        assert served[name] == json.load(open(os.path.join(ROOT, "subgraphs", f"{name}.json"))), name
    mix, edit, recon = (served[n] for n in ("H-Space Style Mixing", "H-Space Edit Along a Direction",
                                           "H-Space Invert and Reconstruct"))
    model = {"model": ["unet", 0], "vae": ["vae", 0]}
    image = lambda name: {"class_type": "LoadImage", "inputs": {"image": name}}  # noqa: E731
    preview = lambda source: {"class_type": "PreviewImage", "inputs": {"images": source}}  # noqa: E731
    prompt = {
        "unet": {"class_type": "HSpaceLoadPixelUNet", "inputs": {"unet_folder": "bundled/hspace-shapes-ddpm",
                                                                 "repo_id": ""}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "content": image("hspace_content.png"), "style": image("hspace_style.png"),
        "circle": image("hspace_circle_1.png"), "square": image("hspace_square_1.png"),
        # invert and reconstruct: the style image, and the two images a direction is made from
        "r_style": _instance(recon, **model, image=["style", 0], steps=STEPS),
        "r_circle": _instance(recon, **model, image=["circle", 0], steps=STEPS),
        "r_square": _instance(recon, **model, image=["square", 0], steps=STEPS),
        "direction": {"class_type": "HSpaceDirectionFromExamples",
                      "inputs": {"positive": ["r_square", 2], "negative": ["r_circle", 2], "form": "global",
                                 "name": "square"}},
        # style mixing at γ = 0 (nothing of the content) and at the default γ
        "m_none": _instance(mix, **model, content=["content", 0], style=["style", 0], gamma=0.0, steps=STEPS),
        "m_half": _instance(mix, **model, content=["content", 0], style=["style", 0], steps=STEPS),
        # editing along the direction at strength 0 (no edit) and 2
        "e_none": _instance(edit, **model, image=["circle", 0], direction=["direction", 0], strength=0.0,
                            steps=STEPS),
        "e_two": _instance(edit, **model, image=["circle", 0], direction=["direction", 0], strength=2.0,
                           steps=STEPS),
    }
    shown = ["r_style", "r_circle", "m_none", "m_half", "e_none", "e_two"]
    prompt.update({f"show_{name}": preview([name, 0]) for name in shown})
    flat = blueprints.expand(prompt, [mix, edit, recon], comfy.object_info)
    assert not {n["class_type"] for n in flat.values()} & {blueprints.subgraph_id(bp) for bp in (mix, edit, recon)}
    entry = comfy.run(flat)
    assert entry["status"]["status_str"] == "success", entry["status"]
    out = {name: png(comfy.images(entry, f"show_{name}")[0]) for name in shown}
    inputs = {name: png(open(os.path.join(ROOT, "workflows", "inputs", f"hspace_{name}.png"), "rb").read())
              for name in ("style", "circle_1")}

    # the blueprint's inversion (1 refinement iteration) at 12 steps: measured 29.1 dB for the style image on 0.33.0
    # (CPU); 20 steps give 36.7 dB, 8 steps 22.1 dB
    psnr = _psnr(out["r_style"], inputs["style"]), _psnr(out["r_circle"], inputs["circle_1"])
    assert min(psnr) > 25, psnr
    # γ = 0 and strength 0 change nothing: the same image as the reconstruction, up to PNG rounding
    assert np.abs(out["m_none"] - out["r_style"]).max() <= 1
    assert np.abs(out["e_none"] - out["r_circle"]).max() <= 1
    # the default mix and a real edit do change the image
    assert np.abs(out["m_half"] - out["r_style"]).mean() > 3
    assert np.abs(out["e_two"] - out["r_circle"]).mean() > 3


def test_the_blueprint_files_are_what_the_generator_writes():
    """subgraphs/*.json come from harness/blueprints.py (python -m harness.blueprints): a stale file fails here."""
    wanted = blueprints.files(blueprints.object_info_in_process())
    stale = [os.path.relpath(p, ROOT) for p in blueprints.stale(wanted)]
    assert not stale, f"{stale} are stale: run `{blueprints.COMMAND}` and commit them"
