"""End to end: every shipped workflow through a real ComfyUI server over its HTTP API."""
import json
import os
import time

import numpy as np
import pytest

from e2e_helpers import ROOT, WORKFLOWS, expect_node_error, find, fresh, is_sd, load_prompt, overrides_for, png
from e2e_helpers import run_ok as _run, saved_images as _saved

pytestmark = pytest.mark.e2e


def test_pack_registers_every_node_and_nothing_failed_to_import(comfy):
    ours = {k: v for k, v in comfy.object_info.items() if k.startswith("HSpace")}
    assert len(ours) >= 16
    for name, info in ours.items():
        assert info["description"], name
        assert info["category"].startswith("h-space"), name
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(info["output_tooltips"]), name
    with open(comfy.log_path) as f:
        assert "hspace-nodes" not in "".join(l for l in f if "IMPORT FAILED" in l)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_runs(comfy, path):
    """Every sample workflow runs and saves images of the model's size (labelled grids larger); every DDIM Inversion
    of a pixel workflow (the bundled, trained model) reconstructs its input better than the input's own mean colour
    does (PSNR above 10·log10(2² / Var x), x in [−1, 1]), read from the node's PSNR output."""
    prompt = load_prompt(path, comfy.object_info)
    inversions = [i for i, n in prompt.items() if n["class_type"] == "HSpaceDDIMInversion"]
    for i in inversions:
        prompt[f"psnr_{i}"] = {"class_type": "PreviewAny", "inputs": {"source": [i, 3]}}
    entry = _run(comfy, prompt)
    for i in inversions:
        psnr = float(entry["outputs"][f"psnr_{i}"]["text"][0])
        source = prompt[i]["inputs"].get("image")
        if is_sd(path) or not isinstance(source, list) or prompt[source[0]]["class_type"] != "LoadImage":
            assert np.isfinite(psnr), (i, psnr)
            continue
        name = prompt[source[0]]["inputs"]["image"]
        x = png(open(os.path.join(ROOT, "workflows", "inputs", name), "rb").read()) / 127.5 - 1
        assert psnr > 10 * np.log10(4 / x.var()), (i, name, psnr, 10 * np.log10(4 / x.var()))
    size = 64 if is_sd(path) else 32
    grids = {i for i, n in prompt.items()  # one labelled grid image
             if n["class_type"] in ("HSpaceDirectionExplorer", "HSpaceLabelSweepGrid")}
    saved = [(img, node["inputs"]["images"][0] in grids) for node_id, node in prompt.items()
             if node["class_type"] == "SaveImage" for img in map(png, comfy.images(entry, node_id))]
    assert saved, "the workflow saved no image"
    assert all(img.shape == (size, size, 3) or (grid and img.shape[0] > size) for img, grid in saved), \
        [img.shape for img, _ in saved]


def assert_same_up_to_rounding(a, b, share: float = 1e-3):
    """The same image up to one 8-bit level on a few pixels (two float32 paths of the same math)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < share, (diff.max(), (diff > 0).mean())


def assert_same_up_to_latent_rounding(a, b):
    """x_T reaches an SD edit through a LATENT (SD's latent scale applied and undone in float32): the same image up
    to one 8-bit level on a few pixels."""
    assert_same_up_to_rounding(a, b)


def test_edit_sweep_strength_zero_is_the_reconstruction_and_others_change_it(comfy):
    path = os.path.join(ROOT, "workflows", "sd_asyrp_edit_from_examples.json")
    prompt = load_prompt(path, comfy.object_info)
    entry = _run(comfy, prompt)
    sweep = _saved(comfy, entry, prompt, "sd_edit_sweep")
    reconstruction = _saved(comfy, entry, prompt, "sd_edit_reconstruction")[0]
    strengths = [float(s) for s in prompt[find(prompt, "HSpaceAsyrpEdit")]["inputs"]["strength_sweep"].split(",")]
    assert len(sweep) == len(strengths)
    zero = strengths.index(0.0)
    assert_same_up_to_latent_rounding(sweep[zero], reconstruction)
    for k, s in enumerate(strengths):
        if s != 0:
            assert np.abs(sweep[k] - reconstruction).mean() > 0.5, s
    # the labelled grid: one cell per strength, left to right, each the sweep's image, under a label of its own
    grid = _saved(comfy, entry, prompt, "sd_edit_grid")[0]
    pad, size = 2, sweep[0].shape[0]
    left, top = grid.shape[1] - len(strengths) * (size + pad) - pad, grid.shape[0] - size - 2 * pad
    assert left > 0 and top > 0, grid.shape
    labels = []
    for k in range(len(strengths)):
        x = left + k * (size + pad)
        assert np.abs(grid[top:top + size, x:x + size] - sweep[k]).max() <= 1, k  # SaveImage truncates, the grid rounds
        labels.append(grid[:top, x:x + size])
    assert all((label < 128).any() for label in labels)
    assert len({label.tobytes() for label in labels}) == len(strengths)


def test_injection_changes_the_style_reconstruction(comfy):
    path = os.path.join(ROOT, "workflows", "sd_style_mixing.json")
    prompt = load_prompt(path, comfy.object_info)
    entry = _run(comfy, prompt)
    mixes = _saved(comfy, entry, prompt, "sd_style_mix")
    style = _saved(comfy, entry, prompt, "sd_style_reconstruction")[0]
    gammas = prompt[find(prompt, "HSpaceSlerpContentInject")]["inputs"]["gamma_sweep"].split(",")
    assert len(mixes) == len(gammas) == 3  # one mix per γ of the sweep, each its own picture
    for k, mix in enumerate(mixes):
        assert np.abs(mix - style).mean() > 0.5, gammas[k]
        assert all(np.abs(mix - other).mean() > 0.1 for other in mixes[k + 1:]), gammas[k]


def test_same_seed_same_output_and_cancel_leaves_no_patch(comfy):
    path = os.path.join(ROOT, "workflows", "pixel_content_injection.json")
    prompt = load_prompt(path, comfy.object_info, {"steps": 60})
    fresh(comfy)
    first = _saved(comfy, _run(comfy, prompt), prompt, "pixel_mix_calibrated_boosted")
    fresh(comfy)
    prompt_id = comfy.queue(prompt)
    deadline = time.time() + 120
    while time.time() < deadline:  # interrupt once an h-space node is running
        running = comfy.get("/queue")["queue_running"]
        if running and comfy.get(f"/history/{prompt_id}") == {}:
            time.sleep(1.0)
            break
        time.sleep(0.05)
    comfy.post("/interrupt", {})
    interrupted = comfy.wait(prompt_id)
    assert interrupted["status"]["status_str"] == "error"
    assert any(kind == "execution_interrupted" for kind, _ in interrupted["status"]["messages"])
    again = _saved(comfy, _run(comfy, prompt), prompt, "pixel_mix_calibrated_boosted")
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_gamma_ramp_through_the_node(comfy):
    """gamma → gamma_end reaches the core as a ramp; gamma_end = −1 and gamma_end = gamma are the same constant."""
    prompt = load_prompt(os.path.join(ROOT, "workflows", "pixel_content_injection.json"), comfy.object_info)
    plain = next(i for i, n in prompt.items() if n["class_type"] == "HSpaceSlerpContentInject"
                 and "calibration" not in n["inputs"])
    decode = next(i for i, n in prompt.items() if n["class_type"] == "VAEDecode" and n["inputs"]["samples"][0] == plain)
    settings = {"constant": (0.8, -1.0), "constant_explicit": (0.8, 0.8), "rising": (0.0, 0.8)}
    for k, (name, (gamma, gamma_end)) in enumerate(settings.items()):
        mix, dec, save = (f"{900 + 3 * k + j}" for j in range(3))
        prompt[mix] = {**prompt[plain], "inputs": {**prompt[plain]["inputs"], "gamma": gamma, "gamma_end": gamma_end}}
        prompt[dec] = {**prompt[decode], "inputs": {**prompt[decode]["inputs"], "samples": [mix, 0]}}
        prompt[save] = {"class_type": "SaveImage", "inputs": {"images": [dec, 0], "filename_prefix": f"hspace/ramp_{name}"}}
    entry = _run(comfy, prompt)
    out = {name: _saved(comfy, entry, prompt, f"ramp_{name}")[0].astype(float) for name in settings}
    style = _saved(comfy, entry, prompt, "pixel_style_reconstruction")[0].astype(float)
    assert np.array_equal(out["constant"], out["constant_explicit"])
    assert np.abs(out["rising"] - out["constant"]).mean() > 0.5
    assert np.abs(out["rising"] - style).mean() > 0.5  # γ = 0 at T still injects on the way to t_edit


def test_bad_inputs_come_back_as_clear_node_errors(comfy):
    base = load_prompt(os.path.join(ROOT, "workflows", "sd_style_mixing.json"), comfy.object_info)
    mismatched = json.loads(json.dumps(base))  # the content photo at another size than the painted style latent
    scale_node = find(mismatched, "ImageScale")
    mismatched[scale_node]["inputs"]["width"] = mismatched[scale_node]["inputs"]["height"] = 128
    expect_node_error(comfy, mismatched, "same size")

    masked = load_prompt(os.path.join(ROOT, "workflows", "sd_local_mixing_mask.json"), comfy.object_info)
    masked["99"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    masked["98"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["97", 0], "amount": 3}}
    masked["97"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    masked["96"] = {"class_type": "MaskToImage", "inputs": {"mask": ["99", 0]}}
    masked["95"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["96", 0], "amount": 3}}
    masked["94"] = {"class_type": "ImageToMask", "inputs": {"image": ["95", 0], "channel": "red"}}
    masked[find(masked, "HSpaceSlerpContentInject")]["inputs"]["mask"] = ["94", 0]
    expect_node_error(comfy, masked, "mask", "batch")

    boosted = load_prompt(os.path.join(ROOT, "workflows", "pixel_content_injection.json"), comfy.object_info)
    boosted[find(boosted, "HSpaceQualityBoost")]["inputs"]["t_boost"] = 600
    expect_node_error(comfy, boosted, "below", "t_boost")

    no_mid = load_prompt(os.path.join(ROOT, "workflows", "interpolation.json"), comfy.object_info)
    no_mid[find(no_mid, "HSpaceLoadPixelUNet")]["inputs"]["unet_folder"] = "no-middle-block-unet"
    expect_node_error(comfy, no_mid, "no middle block")
    # and the server still runs a good workflow afterwards
    _run(comfy, load_prompt(os.path.join(ROOT, "workflows", "interpolation.json"), comfy.object_info))


def test_auto_schedule_node(comfy):
    prompt = {
        "1": {"class_type": "HSpaceLoadPixelUNet", "inputs": {"unet_folder": "bundled/hspace-shapes-ddpm", "repo_id": ""}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "hspace_content.png"}},
        "4": {"class_type": "HSpaceAutoSchedule", "inputs": {
            "model": ["1", 0], "image": ["3", 0], "vae": ["2", 0], "edit_threshold": 0.33, "boost_threshold": 1.2,
            "text_cosine": 1.0, "probes": 6, "lpips_backbone": "alex (random weights, testing only)", "seed": 0,
            "cfg": 1.0, "edit_branches": "cond"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    }
    entry = _run(comfy, prompt)
    t_edit, t_boost = (int(entry["outputs"][k]["text"][0]) for k in ("5", "6"))
    assert 0 <= t_boost <= t_edit <= 999
    probes = [round(i * 999 / 5) for i in range(6)]
    assert t_edit in probes and t_boost in probes  # crossings are reported on the probed grid


def test_save_and_load_round_trip_through_the_server(comfy):
    prompt = load_prompt(os.path.join(ROOT, "workflows", "interpolation.json"), comfy.object_info)
    inversion = find(prompt, "HSpaceDDIMInversion")
    prompt["90"] = {"class_type": "HSpaceSaveTrajectory", "inputs": {"trajectory": [inversion, 1], "filename_prefix": "e2e"}}
    entry = _run(comfy, prompt)
    saved_name = entry["outputs"]["90"]["text"][0]
    info = comfy.get("/object_info/HSpaceLoadTrajectory")["HSpaceLoadTrajectory"]
    assert saved_name in info["input"]["required"]["trajectory_file"][1]["options"]
    check = {
        "1": {"class_type": "HSpaceLoadTrajectory", "inputs": {"trajectory_file": saved_name}},
        "2": {"class_type": "HSpacePreviewH", "inputs": {"trajectory": ["1", 0], "step": 0, "size": 64}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    entry = _run(comfy, check)
    norms = entry["outputs"]["2"]["text"][0]
    assert norms.startswith("t=999:") and norms.count("t=") == prompt[inversion]["inputs"]["steps"]


def test_clip_direction_training_workflow_learns_saves_and_edits(comfy):
    from hspace_core import Direction

    path = os.path.join(ROOT, "workflows", "pixel_train_clip_direction.json")
    # strengths ±0.25: the toy direction (random tiny CLIP) is already past its linear range at ±1
    # (corr −0.88 / −0.52 / +0.13 at ±0.25 / ±0.5 / ±1 in-process)
    prompt = load_prompt(path, comfy.object_info, {**overrides_for(path), "strength_sweep": "-0.25, 0, 0.25"})
    entry = _run(comfy, prompt)
    saved = entry["outputs"][find(prompt, "HSpaceSaveDirection")]["text"][0]
    direction = Direction.load(os.path.join(comfy.base, "models", "hspace_directions", saved))
    trainer = prompt[find(prompt, "HSpaceTrainAsyrpDirection")]["inputs"]
    assert direction.form == trainer["form"] == "implicit" and direction.fingerprint
    meta = direction.metadata
    assert (meta["source_text"], meta["target_text"]) == (trainer["source_text"], trainer["target_text"])
    assert (meta["train_steps"], meta["t_edit"], meta["images"]) == (trainer["steps"], trainer["t_edit"], 2)

    minus, zero, plus = (img.astype(float) for img in _saved(comfy, entry, prompt, "pixel_clip_edit_sweep"))
    assert np.abs(plus - zero).mean() > 0.5 and np.abs(minus - zero).mean() > 0.5
    # Asyrp: the edit is (close to) linear in the strength, so −s and +s move the image in opposite directions
    assert np.corrcoef((plus - zero).ravel(), (minus - zero).ravel())[0, 1] < -0.3


def test_official_asyrp_checkpoints_load_and_edit_through_the_server(comfy):
    import torch

    folder = os.path.join(comfy.base, "models", "asyrp")
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    c, temb = 128, 64  # the bundled model: h has 128 channels, its time embedding 4 × 16
    block = {"conv1.weight": r(c, c, 1, 1), "conv1.bias": r(c), "temb_proj.weight": r(c, temb), "temb_proj.bias": r(c),
             "norm2.weight": 1 + r(c), "norm2.bias": r(c), "conv2.weight": r(c, c, 1, 1), "conv2.bias": r(c)}
    torch.save({"0": block, "optimizer": {"state": {}, "param_groups": []}}, os.path.join(folder, "e2e_LC_shapes_ngen20_0.pth"))
    torch.save({"0": {"weight": r(4)}}, os.path.join(folder, "not_asyrp.pth"))
    prompt = {
        "1": {"class_type": "HSpaceLoadPixelUNet", "inputs": {"unet_folder": "bundled/hspace-shapes-ddpm", "repo_id": ""}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "hspace_content.png"}},
        "4": {"class_type": "HSpaceDDIMInversion", "inputs": {"model": ["1", 0], "image": ["3", 0], "vae": ["2", 0],
                                                              "steps": 20, "refine_iters": 0, "cfg": 1.0, "edit_branches": "cond"}},
        "5": {"class_type": "HSpaceLoadAsyrpDirection", "inputs": {"model": ["1", 0], "asyrp_file": "e2e_LC_shapes_ngen20_0.pth",
                                                                   "train_steps": 0}},
        "6": {"class_type": "HSpaceAsyrpEdit", "inputs": {"model": ["1", 0], "x_T": ["4", 0], "direction": ["5", 0],
                                                          "strength": 1.0, "steps": 20, "t_edit": 400, "strength_sweep": "0, 0.5",
                                                          "seed": 0, "cfg": 1.0, "edit_branches": "cond"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["2", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "e2e/official_sweep"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 2], "vae": ["2", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "e2e/official_reconstruction"}},
    }
    entry = _run(comfy, prompt)
    zero, half = _saved(comfy, entry, prompt, "official_sweep")
    # H-Space Asyrp Edit and DDIM Inversion's reconstruction both run the σ-space loop (run_h_edit), x_T from the
    # σ-space inversion: equal to float rounding (1e-5 relative), which can move a pixel by one 8-bit level
    assert_same_up_to_rounding(zero, _saved(comfy, entry, prompt, "official_reconstruction")[0])
    assert np.abs(half - zero).mean() > 0.5
    prompt["5"]["inputs"]["asyrp_file"] = "not_asyrp.pth"
    expect_node_error(comfy, prompt, "not an Asyrp direction", "conv1.weight")


def test_ddim_repo_checkpoint_loads_through_the_pixel_loader(comfy):
    """A DDIM-repo Model checkpoint (the layout of Asyrp's celeba_hq.ckpt) in models/diffusion_models, picked by
    name, inverts and reconstructs through the server; the node's PSNR output is the PSNR of the saved reconstruction
    against the input (to 8-bit rounding; the weights are random, so its value says nothing); a file of another
    layout is a clear node error."""
    import torch

    from ddim_reference import Model

    folder = os.path.join(comfy.base, "models", "diffusion_models")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    torch.save(Model(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,)).state_dict(),
               os.path.join(folder, "e2e_ddim_celeba.ckpt"))
    torch.save({"encoder.weight": torch.zeros(2)}, os.path.join(folder, "e2e_not_ddim.ckpt"))
    prompt = {
        "1": {"class_type": "HSpaceLoadPixelUNet", "inputs": {"unet_folder": "bundled/hspace-shapes-ddpm",
                                                              "repo_id": "e2e_ddim_celeba.ckpt"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "hspace_content.png"}},
        "4": {"class_type": "HSpaceDDIMInversion", "inputs": {"model": ["1", 0], "image": ["3", 0], "vae": ["2", 0],
                                                              "steps": 10, "refine_iters": 0, "cfg": 1.0, "edit_branches": "cond",
                                                              "convention": "seed", "cfg_inversion": "plain",
                                                              "h_source": "inversion"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 2], "vae": ["2", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "e2e/ddim_ckpt_reconstruction"}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["4", 3]}},
    }
    entry = _run(comfy, prompt)
    (reconstruction,) = _saved(comfy, entry, prompt, "ddim_ckpt_reconstruction")
    node_psnr = float(entry["outputs"]["11"]["text"][0])
    image = png(open(os.path.join(ROOT, "workflows", "inputs", "hspace_content.png"), "rb").read())
    mse = (((reconstruction.astype(np.float64) - image) / 255) ** 2).mean()
    assert np.isfinite(node_psnr) and abs(node_psnr - 10 * np.log10(1 / mse)) < 0.2, (node_psnr, mse)
    prompt["1"]["inputs"]["repo_id"] = "e2e_not_ddim.ckpt"
    expect_node_error(comfy, prompt, "e2e_not_ddim.ckpt", "Unknown checkpoint layout")


def test_clip_direction_training_through_an_sd_model(comfy):
    """The same node on a Stable Diffusion MODEL: P_t is decoded by the VAE (with gradients) before CLIP."""
    prompt = load_prompt(os.path.join(ROOT, "workflows", "sd_asyrp_edit_from_examples.json"), comfy.object_info)
    examples = find(prompt, "HSpaceDirectionFromExamples")
    positive_images = prompt[prompt[examples]["inputs"]["positive"][0]]["inputs"]["image"]
    training = load_prompt(os.path.join(ROOT, "workflows", "pixel_train_clip_direction.json"), comfy.object_info)
    trainer = training[find(training, "HSpaceTrainAsyrpDirection")]
    edit = find(prompt, "HSpaceAsyrpEdit")
    trainer["inputs"].update({"model": prompt[edit]["inputs"]["model"], "images": positive_images,
                              "vae": prompt[prompt[edit]["inputs"]["x_T"][0]]["inputs"]["vae"],
                              "positive": prompt[edit]["inputs"]["positive"], "steps": 8, "inversion_steps": 8,
                              "t_edit": 400})
    prompt[examples] = trainer
    entry = _run(comfy, prompt)
    sweep = _saved(comfy, entry, prompt, "sd_edit_sweep")
    reconstruction = _saved(comfy, entry, prompt, "sd_edit_reconstruction")[0]
    strengths = [float(s) for s in prompt[edit]["inputs"]["strength_sweep"].split(",")]
    assert_same_up_to_latent_rounding(sweep[strengths.index(0.0)], reconstruction)
    assert all(np.abs(img - reconstruction).mean() > 0.5 for s, img in zip(strengths, sweep) if s != 0)


def test_the_main_job_writes_one_contact_sheet(main_job):
    """scripts/demo.sh's workflows through the main job's own code (the ``main_job`` fixture); its sheet: one PNG in
    which every input and every saved image of each workflow is a cell (upscaled as the sheet shows it), except a
    sweep that a saved labelled grid shows (the grid is the cell: pixel_asyrp_edit's), which is not a row as well."""
    import re

    from PIL import Image

    from harness.contact_sheet import upscaled
    from harness.run_workflows import in_saved_grids

    tmp_path, paths, sheet, failures = main_job
    assert len(paths) == 3
    assert failures == 0 and sheet == str(tmp_path / "contact_sheet.png")
    assert [p.name for p in tmp_path.glob("*.png")] == ["contact_sheet.png"]
    width, height = Image.open(sheet).size
    assert width >= 6 * 4 * 32 and height >= 3 * 2 * 4 * 32  # the widest row: 6 frames at 4×; 3 workflows of ≥ 2 rows
    sheet_pixels = np.asarray(Image.open(sheet).convert("RGB"))
    gridded = {}
    for path in paths:  # every input and every saved image of every workflow is a cell, pixel for pixel
        name = os.path.splitext(os.path.basename(path))[0]
        shown = in_saved_grids(json.load(open(os.path.join(ROOT, "workflows", "api", f"{name}.json"))))
        saved = sorted((tmp_path / name).glob("*.png"))
        gridded[name] = [p for p in saved if p.stem.rsplit("_", 1)[0] in shown]
        inputs = re.findall(r'"(\w+\.png)"', open(path).read())
        assert saved and inputs, name
        for cell in [*(p for p in saved if p not in gridded[name]),
                     *(os.path.join(ROOT, "workflows", "inputs", i) for i in inputs)]:
            assert _is_cell(sheet_pixels, np.asarray(upscaled(str(cell), 4))), (name, cell)
    assert {name: len(cells) for name, cells in gridded.items()} == {
        "pixel_content_injection": 0, "pixel_asyrp_edit": 5, "interpolation": 0}
    # a gridded sweep is no row of its own: its end images (the grid draws its cells at another size) are not cells
    assert not any(_is_cell(sheet_pixels, np.asarray(upscaled(str(p), 4))) for p in gridded["pixel_asyrp_edit"][::4])


def _is_cell(sheet: np.ndarray, cell: np.ndarray) -> bool:
    """Whether ``cell`` appears in ``sheet`` exactly (candidates: positions where five probe pixels agree)."""
    h, w = cell.shape[:2]
    rows, cols = sheet.shape[0] - h + 1, sheet.shape[1] - w + 1
    if rows < 1 or cols < 1:
        return False
    mask = np.ones((rows, cols), bool)
    for dy, dx in ((0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1), (h - 1, 0)):
        mask &= (sheet[dy:dy + rows, dx:dx + cols] == cell[dy, dx]).all(-1)
    return any(np.array_equal(sheet[y:y + h, x:x + w], cell) for y, x in zip(*np.nonzero(mask)))


def test_discovery_nodes_through_the_server(comfy):
    """Jacobian, probe and orthogonalise nodes on the bundled model, the explorer with both inputs, and bad input."""
    from hspace_core import Direction

    prompt = load_prompt(os.path.join(ROOT, "workflows", "discover_directions.json"), comfy.object_info)
    inversion, pca = find(prompt, "HSpaceDDIMInversion"), find(prompt, "HSpacePCADirections")
    one = find(prompt, "LatentFromBatch")
    model, vae = prompt[inversion]["inputs"]["model"], prompt[inversion]["inputs"]["vae"]
    common = {"cfg": 1.0, "edit_branches": "cond"}
    prompt.update({
        "80": {"class_type": "HSpaceJacobianDirections", "inputs": {
            "model": model, "x_T": [one, 0], "steps": 10, "t": 500, "k": 2, "component": 1, "output": "eps",
            "relative_norm": 0.1, "iterations": 3, "seed": 0, **common}},
        **{f"7{k}": {"class_type": "LoadImage", "inputs": {"image": f"hspace_{name}.png"}}
           for k, name in enumerate(("circle_1", "circle_2", "square_1", "square_2"))},
        "74": {"class_type": "ImageBatch", "inputs": {"image1": ["70", 0], "image2": ["71", 0]}},
        "75": {"class_type": "ImageBatch", "inputs": {"image1": ["72", 0], "image2": ["73", 0]}},
        "76": {**prompt[inversion], "inputs": {**prompt[inversion]["inputs"], "image": ["74", 0]}},
        "77": {**prompt[inversion], "inputs": {**prompt[inversion]["inputs"], "image": ["75", 0]}},
        "81": {"class_type": "HSpaceProbeDirection", "inputs": {
            "positive": ["76", 1], "negative": ["77", 1], "method": "svm", "form": "global", "l2": 0.001,
            "name": "probe"}},
        "86": {"class_type": "HSpaceSaveDirection", "inputs": {"direction": ["81", 0], "filename_prefix": "e2e_probe"}},
        "82": {"class_type": "HSpaceOrthogonaliseDirection", "inputs": {
            "direction": ["80", 1], "against": [pca, 1], "against_set": [pca, 0], "keep_norm": True}},
        "83": {"class_type": "HSpaceSaveDirection", "inputs": {"direction": ["82", 0], "filename_prefix": "e2e_orth"}},
        "84": {"class_type": "HSpaceDirectionExplorer", "inputs": {
            "model": model, "x_T": [one, 0], "vae": vae, "directions": ["80", 0], "direction": ["82", 0],
            "strengths": "-1, 0, 1", "steps": 10, "t_edit": 400, "scale": 2, "seed": 0, **common}},
        "85": {"class_type": "SaveImage", "inputs": {"images": ["84", 0], "filename_prefix": "e2e/jacobian_grid"}},
    })
    entry = _run(comfy, prompt)
    assert entry["outputs"]["80"]["text"][0].count("singular_value") == 2
    saved = entry["outputs"]["83"]["text"][0]
    d = Direction.load(os.path.join(comfy.base, "models", "hspace_directions", saved))
    assert d.metadata["method"] == "jacobian" and d.fingerprint and len(d.metadata["orthogonal_to"]) == 5
    probe = Direction.load(os.path.join(comfy.base, "models", "hspace_directions", entry["outputs"]["86"]["text"][0]))
    assert probe.form == "global" and probe.metadata["method"] == "svm" and probe.metadata["train_accuracy"] == 1.0
    grid = _saved(comfy, entry, prompt, "jacobian_grid")[0]
    assert grid.shape[0] > 3 * 64 and grid.shape[1] > 3 * 64  # 3 rows × 3 columns of 64-px tiles and labels

    too_many = json.loads(json.dumps(prompt))
    too_many[pca]["inputs"].update(k=6, form="per_timestep")
    expect_node_error(comfy, too_many, "rank 5: set k between 1 and 5")
    batch = json.loads(json.dumps(prompt))
    batch["84"]["inputs"]["x_T"] = [inversion, 0]
    expect_node_error(comfy, batch, "pick one")


def test_site_choice_through_the_server(comfy):
    """DDIM Inversion at site up1 → PCA → the explorer (t_edit axis) and H-Space Asyrp Edit read h at up1 with no site input
    of their own; the saved direction records up1; mixing sites is refused with the site to set."""
    from hspace_core import Direction

    prompt = load_prompt(os.path.join(ROOT, "workflows", "discover_directions.json"), comfy.object_info)
    inversion, pca = find(prompt, "HSpaceDDIMInversion"), find(prompt, "HSpacePCADirections")
    model, vae = prompt[inversion]["inputs"]["model"], prompt[inversion]["inputs"]["vae"]
    prompt = {k: v for k, v in prompt.items() if v["class_type"] not in ("HSpaceDirectionExplorer", "SaveImage")}
    prompt.update({
        "90": {**prompt[inversion], "inputs": {**prompt[inversion]["inputs"], "site": "up1"}},
        "91": {**prompt[pca], "inputs": {**prompt[pca]["inputs"], "trajectory": ["90", 1], "k": 2, "name": "up"}},
        "92": {"class_type": "LatentFromBatch", "inputs": {"samples": ["90", 0], "batch_index": 0, "length": 1}},
        "93": {"class_type": "HSpaceDirectionExplorer", "inputs": {
            "model": model, "x_T": ["92", 0], "vae": vae, "directions": ["91", 0], "strengths": "-1, 1", "steps": 10,
            "t_edit": 400, "scale": 1, "seed": 0, "cfg": 1.0, "edit_branches": "cond", "t_edit_sweep": "600, 200"}},
        "94": {"class_type": "SaveImage", "inputs": {"images": ["93", 0], "filename_prefix": "e2e/site_grid"}},
        "95": {"class_type": "HSpaceSaveDirection", "inputs": {"direction": ["91", 1], "filename_prefix": "e2e_up1"}},
        "96": {"class_type": "HSpaceAsyrpEdit", "inputs": {
            "model": model, "x_T": ["92", 0], "direction": ["91", 1], "strength": 1.0, "steps": 10, "t_edit": 400,
            "seed": 0, "cfg": 1.0, "edit_branches": "cond"}},
        "97": {"class_type": "VAEDecode", "inputs": {"samples": ["96", 0], "vae": vae}},
        "98": {"class_type": "SaveImage", "inputs": {"images": ["97", 0], "filename_prefix": "e2e/site_edit"}},
    })
    entry = _run(comfy, prompt)
    saved = Direction.load(os.path.join(comfy.base, "models", "hspace_directions", entry["outputs"]["95"]["text"][0]))
    assert saved.site == "up1" and saved.h_shape == (128, 8, 8)  # the bundled model's first up level, 32-px images
    grid = _saved(comfy, entry, prompt, "site_grid")[0]
    assert grid.shape[0] > 4 * 32 and grid.shape[1] > 2 * 32  # 2 directions × 2 t_edits rows, 2 strength columns
    assert _saved(comfy, entry, prompt, "site_edit")[0].shape[:2] == (32, 32)

    mixed = json.loads(json.dumps(prompt))
    mixed["99"] = {"class_type": "HSpaceOrthogonaliseDirection", "inputs": {
        "direction": ["91", 1], "against": [pca, 1], "keep_norm": False}}
    mixed["100"] = {"class_type": "HSpaceSaveDirection", "inputs": {"direction": ["99", 0], "filename_prefix": "e2e_mix"}}
    expect_node_error(comfy, mixed, "different sites", "direction at site 'up1'", "against at site 'middle'")
    bad = json.loads(json.dumps(prompt))
    bad["90"]["inputs"]["site"] = "up7"
    expect_node_error(comfy, bad, "site")
