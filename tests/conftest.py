"""Shared fixtures over harness.tiny (tiny seeded diffusers U-Nets, an analytic denoiser) and a real ComfyUI server."""
from __future__ import annotations

import os

import pytest
import torch

from harness.tiny import tiny_pixel_unet, tiny_text_unet

torch.set_num_threads(1)


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
