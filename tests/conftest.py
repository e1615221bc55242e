"""Shared fixtures over harness.tiny (tiny seeded diffusers U-Nets, an analytic denoiser) and a real ComfyUI server."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from harness.tiny import tiny_pixel_unet, tiny_text_unet

torch.set_num_threads(1)


COMFY_USES = ("harness.inprocess", "node_module(", "load_pack(", "hspace_pack", "node_docs", "comfy_api", "import comfy", "from comfy", "workflow_passes")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    """Mark every test that runs ComfyUI code, in-process or through a server, as ``comfy``: the lane of another
    ComfyUI version (``.ci/run``) runs ``-m comfy``, since the other tests never touch ComfyUI."""
    sources = {}
    for item in items:
        path = str(item.fspath)
        if path not in sources:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            sources[path] = any(use in source for use in COMFY_USES)
        if sources[path] or {"pack", "comfy"} & set(item.fixturenames) or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.comfy)


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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_SOURCE = {".git", "node_modules", "__pycache__", ".pytest_cache"}


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
