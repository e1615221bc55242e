"""End to end: the Flux and SD3.5 sample workflows (issue 38) through a real ComfyUI server, on the tiny Flux and SD3
stand-ins for their loaders (e2e_helpers.STAND_INS; 64-px images, 8 steps): each runs, and its output changes as its
method says. Asyrp: strength 0 is ComfyUI's own euler from the same x_T bit for bit (and close to the photo's VAE round
trip), strength 1 changes it, and the saved direction carries a transformer site. Content injection: γ 0 is the
style reconstruction bit for bit, the shipped γ changes it. FluxSpace: λ 0 is the plain image bit for bit, the
shipped λ changes it. What this measures is plumbing on random weights, not edit quality (docs/transformers.md)."""
import json
import os

import numpy as np
import pytest

from e2e_helpers import ROOT, find, load_prompt
from e2e_helpers import run_ok as _run, saved_images as _saved

pytestmark = pytest.mark.e2e


def _path(name):
    return os.path.join(ROOT, "workflows", name + ".json")


def _decoded(prompt, node_id, samples, vae, prefix):
    """Decode ``samples`` with ``vae`` and save it as ``prefix`` under the ids ``node_id``, ``node_id``+"s"."""
    prompt[node_id] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": vae}}
    prompt[node_id + "s"] = {"class_type": "SaveImage", "inputs": {"images": [node_id, 0], "filename_prefix": prefix}}


def _source_of(prompt, save_prefix_end):
    """The node id whose LATENT the SaveImage ending in ``save_prefix_end`` shows (through its VAEDecode)."""
    save = next(n for n in prompt.values() if n["class_type"] == "SaveImage"
                and n["inputs"]["filename_prefix"].endswith(save_prefix_end))
    return prompt[save["inputs"]["images"][0]]["inputs"]["samples"][0]


def _stronger(prompt, run, knob, value, vae, prefix):
    """A copy of the SamplerCustomAdvanced ``run`` whose h-space SAMPLER has ``knob`` = ``value``, decoded and saved."""
    sampler = prompt[run]["inputs"]["sampler"][0]
    prompt["95"] = {**prompt[sampler], "inputs": {**prompt[sampler]["inputs"], knob: value}}
    prompt["96"] = {"class_type": "SamplerCustomAdvanced", "inputs": {**prompt[run]["inputs"], "sampler": ["95", 0]}}
    _decoded(prompt, "97", ["96", 0], vae, prefix)


def _mean_change(a, b):
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_flux_asyrp_edit_workflow(comfy):
    from hspace_core import Direction

    prompt = load_prompt(_path("flux_asyrp_edit"), comfy.object_info)
    edit, reconstruction = _source_of(prompt, "flux_edit"), _source_of(prompt, "flux_reconstruction")
    x_T, vae = prompt[edit]["inputs"]["latent_image"], prompt["40"]["inputs"]["vae"]
    prompt["90"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["91"] = {"class_type": "SamplerCustomAdvanced", "inputs": {**prompt[reconstruction]["inputs"],
                                                                      "sampler": ["90", 0]}}
    _decoded(prompt, "92", ["91", 0], vae, "e2e/flux_euler")
    encoded = find(prompt, "VAEEncode")
    _decoded(prompt, "93", [encoded, 0], vae, "e2e/flux_vae_round_trip")
    _stronger(prompt, edit, "strength", 20.0, vae, "e2e/flux_edit_strength20")
    entry = _run(comfy, prompt)
    edited, zero = _saved(comfy, entry, prompt, "flux_edit")[0], _saved(comfy, entry, prompt, "flux_reconstruction")[0]
    assert x_T == prompt[reconstruction]["inputs"]["latent_image"]
    assert np.array_equal(zero, _saved(comfy, entry, prompt, "flux_euler")[0])  # strength 0 is euler, bit for bit
    # 8 inversion steps with one refinement each: the reconstruction is the photo's VAE round trip to about one level
    # (measured 1.16 mean)
    assert _mean_change(zero, _saved(comfy, entry, prompt, "flux_vae_round_trip")[0]) < 2.0
    # the shipped strength 1 moves the tiny random model's image a little (measured 0.08 mean), strength 20 clearly
    stronger = _mean_change(_saved(comfy, entry, prompt, "flux_edit_strength20")[0], zero)
    assert 0.02 < _mean_change(edited, zero) < stronger and stronger > 0.5, (_mean_change(edited, zero), stronger)
    saved = entry["outputs"][find(prompt, "HSpaceSaveDirection")]["text"][0]
    direction = Direction.load(os.path.join(comfy.base, "models", "hspace_directions", saved))
    assert direction.site.startswith("double.") and direction.site.endswith(".attn"), direction.site


@pytest.mark.parametrize("name,prefix", [("flux_content_injection", "flux_style"), ("sd35_style_mixing", "sd35_style")])
def test_injection_workflows_change_the_style_reconstruction(comfy, name, prefix):
    prompt = load_prompt(_path(name), comfy.object_info)
    mix = prompt[find(prompt, "SamplerCustomAdvanced", sampler=[find(prompt, "HSpaceContentInjectionSampler"), 0])]
    plain = json.loads(json.dumps(prompt[find(prompt, "HSpaceContentInjectionSampler")]))
    plain["inputs"]["gamma"] = 0.0
    prompt["90"] = plain
    prompt["91"] = {"class_type": "SamplerCustomAdvanced", "inputs": {**mix["inputs"], "sampler": ["90", 0]}}
    _decoded(prompt, "92", ["91", 0], prompt[find(prompt, "VAEEncode")]["inputs"]["vae"], f"e2e/{prefix}_gamma0")
    _stronger(prompt, find(prompt, "SamplerCustomAdvanced", sampler=[find(prompt, "HSpaceContentInjectionSampler"), 0]),
              "gamma", 1.0, prompt["92"]["inputs"]["vae"], f"e2e/{prefix}_gamma1")
    entry = _run(comfy, prompt)
    mixed = _saved(comfy, entry, prompt, f"{prefix}_mix")[0]
    style = _saved(comfy, entry, prompt, f"{prefix}_reconstruction")[0]
    assert np.array_equal(_saved(comfy, entry, prompt, f"{prefix}_gamma0")[0], style)  # γ 0 injects nothing
    # the shipped γ 0.4 moves the tiny random model's style image a little (measured 0.19–0.20 mean), γ 1 more
    full = _mean_change(_saved(comfy, entry, prompt, f"{prefix}_gamma1")[0], style)
    assert 0.05 < _mean_change(mixed, style) < full, (name, _mean_change(mixed, style), full)


def test_fluxspace_workflow_edits_and_lambda_zero_is_the_plain_image(comfy):
    prompt = load_prompt(_path("flux_fluxspace_edit"), comfy.object_info)
    patch = find(prompt, "HSpaceFluxSpaceEdit")
    edited = find(prompt, "KSampler", model=[patch, 0])
    prompt["90"] = {**prompt[patch], "inputs": {**prompt[patch]["inputs"], "lam": 0.0, "lam_coarse": 0.0}}
    prompt["91"] = {"class_type": "KSampler", "inputs": {**prompt[edited]["inputs"], "model": ["90", 0]}}
    _decoded(prompt, "92", ["91", 0], prompt["40"]["inputs"]["vae"], "e2e/fluxspace_lambda0")
    entry = _run(comfy, prompt)
    plain = _saved(comfy, entry, prompt, "fluxspace_plain")[0]
    assert np.array_equal(_saved(comfy, entry, prompt, "fluxspace_lambda0")[0], plain)
    assert _mean_change(_saved(comfy, entry, prompt, "fluxspace_edit")[0], plain) > 0.5


def test_the_main_jobs_runner_skips_a_workflow_without_its_weights(comfy, tmp_path, capsys):
    """harness.run_workflows (scripts/demo.sh's runner) on a ComfyUI without Flux weights: a Flux workflow is skipped
    with a line naming the missing files, not failed; a pixel workflow beside it runs."""
    from harness.run_workflows import missing_weights, run_all
    from harness.ui_to_api import ui_to_api

    flux, pixel = _path("flux_fluxspace_edit"), _path("interpolation")
    shipped = ui_to_api(json.load(open(flux)), comfy.object_info)  # the real loaders, not the tiny stand-ins
    assert missing_weights(shipped, comfy.object_info) == [
        "UNETLoader.unet_name: flux1-dev.safetensors", "DualCLIPLoader.clip_name1: clip_l.safetensors",
        "DualCLIPLoader.clip_name2: t5xxl_fp16.safetensors", "VAELoader.vae_name: ae.safetensors"]
    assert missing_weights(ui_to_api(json.load(open(pixel)), comfy.object_info), comfy.object_info) == []
    sheet, failures = run_all(comfy, [flux, pixel], str(tmp_path))
    assert failures == 0 and os.path.exists(sheet)
    assert not (tmp_path / "flux_fluxspace_edit").exists() and any((tmp_path / "interpolation").iterdir())
    assert "flux_fluxspace_edit: skipped: this ComfyUI has no UNETLoader.unet_name: flux1-dev.safetensors" in \
        capsys.readouterr().out
