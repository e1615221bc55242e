"""Shared by the batch-job tests (tests/test_jobs*.py): folders of the bundled model's 32×32 shape images and the
library's own result for one image, the reference every engine must equal bit for bit."""
from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import load_file

import hspace_core as hs
from hspace_core.jobs import ImageSpec, JobSpec, item_seed, read_image
from hspace_core.jobs.models import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "models", "hspace-shapes-ddpm")
STEPS = 4


def shape_folder(folder: str, count: int, seed: int = 5) -> str:
    """``count`` PNGs of the demo dataset's shapes (32×32 RGB), named img00.png …"""
    from PIL import Image

    from hspace_demo.images import to_uint8
    from hspace_demo.shapes import make_batch

    os.makedirs(folder, exist_ok=True)
    for i, array in enumerate(to_uint8(torch.from_numpy(make_batch(count, seed=seed)[0]))):
        Image.fromarray(array).save(os.path.join(folder, f"img{i:02d}.png"))
    return folder


def spec(kind: str, folder: str, shard_size: int = 4, seed: int = 0, **settings) -> JobSpec:
    inputs = folder if isinstance(folder, dict) else {"images": folder}
    return JobSpec(kind, inputs, BUNDLED, {"steps": STEPS, "site": "middle", **settings}, shard_size, (32, 32), 3,
                   seed)


def shard_tensors(out: str) -> dict[str, torch.Tensor]:
    """Every shard's tensors, concatenated along the images in shard order (h along dim 1)."""
    files = sorted(f for f in os.listdir(os.path.join(out, "shards")) if f.endswith(".safetensors"))
    parts = [load_file(os.path.join(out, "shards", f)) for f in files]
    return {k: torch.cat([p[k] for p in parts], 1 if k == "h" else 0) for k in parts[0]}


_model = {}


def bundled():
    if "m" not in _model:
        _model["m"] = load_model(BUNDLED)
    return _model["m"]


def library_inversion(folder: str, name: str):
    x = read_image(folder, name, ImageSpec((32, 32)))
    with torch.no_grad():
        return hs.invert(bundled(), x, STEPS, report=False)


def library_edit(folder: str, name: str, index: int, direction, strength: float, schedule, seed: int = 0):
    with torch.no_grad():
        return hs.edit(bundled(), library_inversion(folder, name).x_T, direction, strength, schedule,
                       seed=item_seed(seed, index))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def as_array(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
