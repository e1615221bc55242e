"""CLIP direction training over a folder (Asyrp's ``train_direction``): in this process, or data-parallel on a Ray
cluster with Ray Train (``TorchTrainer``).  Each Ray worker holds the model and CLIP, trains on every world-th image
and averages the gradients over the workers (all-reduce) after every backward pass, before the optimiser step —
DistributedDataParallel's rule — so every worker takes the same steps: the same training as one process with a
batch of one image per worker (``batch_size`` × workers images per step)."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..clip_directions import CLIPDirectional, DirectionTraining, TrainedDirection, train_direction
from ..direction import Direction
from .atomic import temporary_name
from .images import ImageProblem, ImageSpec, list_images, read_image
from .models import load_model

log = logging.getLogger("hspace.jobs")


@dataclass(frozen=True)
class ClipJob:
    """What to train: the model, the folder and its image ``size``, the two texts and ``DirectionTraining``."""

    model: str
    folder: str
    size: tuple
    source_text: str
    target_text: str
    config: DirectionTraining = DirectionTraining()
    site: str = "middle"


def usable_images(job: ClipJob) -> tuple[list[str], list[list[str]]]:
    """The folder's images that read, and [file, reason] for those that do not (skipped, as in the other jobs)."""
    names, problems = [], []
    for name in list_images(job.folder):
        try:
            read_image(job.folder, name, ImageSpec(tuple(job.size)))
            names.append(name)
        except ImageProblem as problem:
            problems.append([os.path.join(job.folder, name), problem.reason])
    if not names:
        raise ValueError(f"No image of {job.folder} could be read; see the reasons logged above.")
    return names, problems


def worker_share(names: list[str], rank: int, world: int) -> list[str]:
    """Every world-th image from ``rank`` of the first ⌊n / world⌋·world, so each worker takes as many steps."""
    usable = len(names) - len(names) % world
    return names[:usable][rank::world]


def _images(job: ClipJob, names: list[str]) -> torch.Tensor:
    return torch.cat([read_image(job.folder, name, ImageSpec(tuple(job.size))) for name in names])


def train_here(job: ClipJob, clip: CLIPDirectional, names: list[str]) -> TrainedDirection:
    model = load_model(job.model, job.site)
    return train_direction(model, _images(job, names), clip, job.source_text, job.target_text, job.config)


def _ray_train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    job, names, path = config["job"], config["names"], config["path"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    model = load_model(job.model, job.site, str(device))

    def average(params):
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    result = train_direction(model, _images(job, worker_share(names, rank, world)).to(device), config["clip"](),
                             job.source_text, job.target_text, job.config, on_gradients=average)
    if rank == 0:
        used = len(names) - len(names) % world
        direction = dataclasses.replace(result.direction,
                                        metadata={**result.direction.metadata, "images": used, "workers": world})
        tmp = temporary_name(path)
        direction.save(tmp)
        os.replace(tmp, path)


def train_on_ray(job: ClipJob, clip_factory: Callable[[], CLIPDirectional], names: list[str], out: str,
                 workers: int, address: str) -> Direction:
    """Ray Train data-parallel training with ``workers`` workers (GPUs when the cluster has them); rank 0 writes
    ``out/direction.safetensors``.  ``clip_factory`` builds the CLIP model in each worker."""
    from .engines import connect_ray

    ray = connect_ray(address, num_cpus=workers if address == "local" else None)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if len(names) % workers:
        log.warning("%d images for %d workers: the last %d are left out so every worker takes the same steps.",
                    len(names), workers, len(names) % workers)
    gpus = ray.cluster_resources().get("GPU", 0) >= workers
    path = os.path.join(os.path.abspath(out), "direction.safetensors")
    trainer = TorchTrainer(_ray_train_loop, train_loop_config={"job": job, "names": names, "path": path,
                                                               "clip": clip_factory},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus),
                           run_config=RunConfig(storage_path=os.path.join(os.path.abspath(out), "ray_train"),
                                                name="clip"))
    trainer.fit()
    return Direction.load(path)
