"""Shared fixtures over harness.tiny (tiny seeded diffusers U-Nets, an analytic denoiser) and a real ComfyUI server."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from harness.tiny import tiny_pixel_unet, tiny_text_unet

torch.set_num_threads(1)


COMFY_USES = ("harness.inprocess", "node_module(", "load_pack(", "hspace_pack", "node_docs", "comfy_api", "import comfy", "from comfy", "workflow_passes")


# The tests of what differs between ComfyUI versions (docs/compatibility.md), marker ``versions``: the lane of another
# ComfyUI version (.ci/run) runs only these, as node-id prefixes. The schema's `advanced` flag and the pixel latent
# format (test_compat), the training node's expert knobs in /object_info's input order (test_e2e_training_widgets);
# patched weights and low-VRAM fingerprints, the U-Net patches that record and edit h (test_native_sampling,
# test_comfy_one_call); the editor and the template folder (test_e2e_editor); every shipped workflow, the pack's
# registration; the SAMPLERs under ComfyUI's guiders and samplers, its own samplers from x_T, CFG batching under guided
# inversion, attention patches (StyleID), SDXL's conditioning, latent previews, ComfyUI's own input validation, caching
# of changed files and interrupts, and its manual cast in half precision; the blueprints ComfyUI serves
# (/global_subgraphs) and the pixel loader's multi-GPU factory (deepclone_multigpu). Not here: the pack's own math on
# ComfyUI's U-Net classes (one code path, windows, inversion), which 0.3.75 runs.
VERSIONS = (
    "tests/test_compat.py", "tests/test_native_sampling.py", "tests/test_comfy_one_call.py", "tests/test_e2e_editor.py",
    "tests/test_e2e_workflows.py::test_pack_registers_every_node", "tests/test_e2e_workflows.py::test_workflow_runs",
    "tests/test_e2e_samplers.py", "tests/test_e2e_native.py", "tests/test_e2e_guided.py", "tests/test_styleid_e2e.py",
    "tests/test_e2e_sdxl.py", "tests/test_e2e_previews.py", "tests/test_e2e_training_widgets.py",
    "tests/test_e2e_blueprints.py::test_the_blueprints_are_served_and_run",
    "tests/test_allocation_graph.py::test_the_pixel_loader_registers_its_factory_for_multi_gpu_copies",
    # Flux's params and blocks differ by version (txt_ids_dims, img_slice, attn1 patches): docs/transformers.md
    "tests/test_transformers.py", "tests/test_e2e_transformers.py", "tests/test_vitality.py",
    "tests/test_e2e_transformer_guards.py", "tests/test_e2e_transformer_workflows.py",
    # StyleID's hooks reach Flux / MMDiT modules by name and layout (qkv, QKNorm, ln_q, img_slice): both versions
    "tests/test_styleid_transformers.py", "tests/test_styleid_e2e_transformers.py",
    # the one-call edited step's batching and block patches, and latent nudging, through each version's sampling
    "tests/test_transformer_one_call.py", "tests/test_latent_nudging.py", "tests/test_fluxspace_one_call.py",
    # directions, the Direction Explorer and Auto Schedule on Flux / SD3 through each version's sampling (issue 38 item 3)
    "tests/test_discovery_transformers.py", "tests/test_e2e_discovery_transformers.py",
    # the quality boost and style calibration on a flow transformer through each version's sampling and model_sampling
    "tests/test_flow_boost_calibration.py",
    # Chroma's params (txt_ids_dims, vec_in_dim), modulation tuples and img_slice differ by version
    "tests/test_transformers_chroma.py", "tests/test_e2e_transformers_chroma.py",
    # DDIM Inversion to σ = 1 and Interpolate on flow, against each version's euler and SAMPLER chain
    "tests/test_flow_ddim_inversion.py",
    # the t widgets' rule on each version's Flux model_sampling (10000 entries): Auto Schedule's t_edit into Asyrp Edit
    "tests/test_t_widgets.py", "tests/test_e2e_t_widgets.py",
    # one test of flow (each version's model_sampling and ModelSamplingSD3 node) and one inversion on Flux
    "tests/test_flow_rule.py",
    # gradients through each version's Flux / MMDiT blocks (in-place residual adds, SD3's checkpointed joint blocks)
    "tests/test_transformer_directions.py", "tests/test_e2e_transformer_directions.py",
    # Asyrp's implicit f_t over Flux's time_in / SD3's t_embedder (each version's embedding and model_sampling)
    "tests/test_transformer_implicit.py", "tests/test_e2e_transformer_implicit.py",
    "tests/test_e2e_hostile.py::test_widget_ranges_are_checked_by_comfyui",
    "tests/test_e2e_hostile.py::test_combo_options_are_checked_by_the_node",
    "tests/test_e2e_hostile.py::test_api_types_are_checked_not_coerced",
    "tests/test_e2e_hostile.py::test_loaders_notice_a_changed_file",
    "tests/test_e2e_hostile.py::test_cancel_lands_within_a_pass_in_every_sub_run",
    # issue 36: ComfyUI's queue deep-copies prompts, the sigma checks read the running prompt, and the samplers'
    # windows go through each version's sampling wrappers
    "tests/test_e2e_hostile.py::test_a_prompt_with_one_refused_output_runs_its_good_output_and_the_queue_goes_on",
    "tests/test_e2e_hostile.py::test_odd_sigmas_are_refused_naming_the_sampler_and_the_node_that_made_them",
    "tests/test_e2e_hostile.py::test_an_empty_window_and_one_below_the_boost_get_the_nodes_rule",
    "tests/test_e2e_hostile.py::test_a_trajectory_kept_from_t_edit_serves_the_injection_sampler_on_its_own_sigmas",
    "tests/test_e2e_hostile.py::test_an_x_T_inverted_on_karras_sigmas_names_its_grid_in_asyrp_edit",
    "tests/test_e2e_hostile.py::test_tampered_direction_fields_are_refused_naming_the_file_and_the_field",
    "tests/test_e2e_hostile.py::test_deeply_nested_metadata_and_settings_are_refused_naming_the_file",
    "tests/test_checkpoints_guided.py::test_guided_checkpoints_load_through_the_pixel_loader",
    "tests/test_e2e_half.py::test_a_sample_workflow_in_half_precision_is_close_to_float32[float16-sd_style_mixing]",
    "tests/test_e2e_half.py::test_a_sample_workflow_in_half_precision_is_close_to_float32[bfloat16-sd_style_mixing]",
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    """Mark every test that runs ComfyUI code, in-process or through a server, as ``comfy`` (the other tests never
    touch ComfyUI), and those in VERSIONS as ``versions``."""
    sources = {}
    for item in items:
        path = str(item.fspath)
        if path not in sources:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            sources[path] = any(use in source for use in COMFY_USES)
        if sources[path] or {"pack", "comfy"} & set(item.fixturenames) or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.comfy)
        if item.nodeid.startswith(VERSIONS):
            item.add_marker(pytest.mark.versions)
    files = {item.nodeid.split("::")[0] for item in items}
    stale = [entry for entry in VERSIONS if entry.split("::")[0] in files
             and not any(item.nodeid.startswith(entry) for item in items)]
    if stale:  # a renamed test would silently leave the versions lane
        raise pytest.UsageError(f"tests/conftest.py VERSIONS names no collected test: {stale}")


@pytest.fixture
def pixel_unet():
    return tiny_pixel_unet()


@pytest.fixture
def text_unet():
    return tiny_text_unet()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 16, generator=g) * 2 - 1


@pytest.fixture(scope="session")
def pack():
    """The pack imported in-process inside ComfyUI (its comfy_model and pixel_model modules)."""
    from harness.inprocess import load_pack

    return load_pack()


@pytest.fixture(scope="module")
def flux(pack):
    """A tiny Flux (``harness.tiny_dit``), one per test module."""
    from harness.tiny_dit import tiny_flux

    return tiny_flux()


@pytest.fixture(scope="module")
def sd3(pack):
    """A tiny SD3 MMDiT (``harness.tiny_dit``), one per test module."""
    from harness.tiny_dit import tiny_sd3

    return tiny_sd3()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A real ComfyUI server (HSPACE_COMFYUI or the one scripts/setup.sh installed) with this pack and tiny models."""
    from harness.server import STATE, ComfyServer, prepare_base

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never download; a Hub id fails at once, not after retries
    base = str(tmp_path_factory.mktemp("comfy-base"))
    prepare_base(base, os.path.join(STATE, "e2e-models"))
    server = ComfyServer(base, os.path.join(base, "server.log")).start()
    server.object_info = server.get("/object_info")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def main_job(comfy, tmp_path_factory):
    """scripts/demo.sh's workflows run once on the session's server through the main job's own code
    (harness.run_workflows.run_all): (output folder, the workflow paths, contact sheet path, failures). The main-job
    test and the README's claims about its figure (tests/test_readme.py) read the same run."""
    import pathlib
    import re

    from harness.run_workflows import run_all

    demo = open(os.path.join(ROOT, "scripts", "demo.sh")).read()
    paths = [os.path.join(ROOT, p) for p in re.findall(r"workflows/\w+\.json", demo)]
    out = tmp_path_factory.mktemp("main-job")
    sheet, failures = run_all(comfy, paths, str(out))
    return pathlib.Path(out), paths, sheet, failures


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_SOURCE = {".git", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}  # tool caches (.ci/run's ruff)


def source_paths(root: str = ROOT) -> set[str]:
    """Every file and folder of the checkout (relative paths), installed packages and bytecode aside."""
    paths = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_SOURCE]
        rel = os.path.relpath(folder, root)
        paths.update(os.path.normpath(os.path.join(rel, name)) for name in dirs + files)
    return paths


def tracked_paths(root: str = ROOT) -> set[str]:
    """Files git tracks and their folders (a merge during a run adds those); empty outside a git checkout."""
    run = subprocess.run(["git", "-C", root, "ls-files"], capture_output=True, text=True)
    files = set(run.stdout.split("\n")) - {""} if run.returncode == 0 else set()
    return files | {p for f in files for p in _parents(f)}


def _parents(path: str):
    while (path := os.path.dirname(path)):
        yield path


@pytest.fixture(scope="session", autouse=True)
def checkout_unchanged():
    """Tests write under tmp_path, never into the source tree (a ComfyUI pointed at workflows/inputs makes input/3d
    there): fails the run, naming them, when it leaves new files or folders in the checkout."""
    before = source_paths()
    yield
    new = sorted(source_paths() - before - tracked_paths())
    assert not new, f"the test run wrote into the source tree: {new[:20]}"
