"""One shard of a job, computed and written: ``ShardRunner`` holds the model (one per process or Ray actor) and turns
a ``Shard`` into its files and its record.  Items run one at a time, on one CPU thread, with their own seed, so a
shard's bits do not depend on the shard size, the number of workers or the engine."""
from __future__ import annotations

import contextlib
import math
import os
import socket
import time

import torch

from ..direction import Direction
from ..file_format import save_tensors
from ..hmath import check_gamma
from ..processes import edit, inject, invert
from ..settings import EditSchedule
from ..trajectory import HTrajectory
from .images import ImageProblem, ImageSpec, read_image, write_png
from .models import load_model
from .moments import HMoments
from .atomic import temporary_name, write_json_atomic
from .plan import JobSpec, Shard, item_seed

# What each kind writes per shard: h trajectories (with x_T), h statistics, or images.
TRAJECTORY_KINDS = ("invert", "capture", "probe")


@contextlib.contextmanager
def one_thread():
    """One intra-op thread while a shard runs (the caller's setting restored after): float sums then run in one
    order whatever the machine's core count, which is what makes a shard's bits the same in a 1-worker, an N-worker
    and a Ray run (measured: 1 and 2 threads give different x_T on the bundled model)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def edit_schedule(settings: dict, num_train_timesteps: int = 1000) -> EditSchedule:
    """The schedule of an edit or injection job (validated by ``EditSchedule``)."""
    return EditSchedule(num_steps=int(settings.get("steps", 20)), t_edit=int(settings.get("t_edit", 400)),
                        t_boost=int(settings.get("t_boost", 0)), eta_boost=float(settings.get("eta_boost", 1.0)),
                        num_train_timesteps=num_train_timesteps)


def check_job(spec: JobSpec) -> None:
    """Refuse bad settings in the driver, before any worker loads the model (a worker that fails to start would
    otherwise be restarted by Ray again and again): steps, the schedule, the direction file, the content image, γ."""
    s = spec.settings
    for name, low in (("steps", 1), ("refine_iters", 0), ("k", 1)):
        if name in s and (not isinstance(s[name], int) or s[name] < low):
            raise ValueError(f"--{name.replace('_', '-')} must be a whole number ≥ {low}, got {s[name]!r}.")
    if spec.kind in ("edit", "inject"):
        edit_schedule(s)
    if spec.kind == "edit":
        Direction.load(s["direction"])
        if not math.isfinite(float(s.get("strength", 1.0))):
            raise ValueError(f"--strength must be a finite number, got {s.get('strength')!r}.")
    if spec.kind == "inject":
        check_gamma(float(s.get("gamma", 0.5)))
        folder, name = os.path.split(s["content"])
        try:
            read_image(folder, name, ImageSpec(tuple(spec.size), spec.channels))
        except ImageProblem as problem:
            raise ValueError(f"--content {s['content']}: {problem.reason}.") from None


class ShardRunner:
    """The model and the fixed inputs of a job (the direction of an edit, the content of an injection), loaded once;
    ``run(shard)`` computes a shard and writes it under ``out``."""

    def __init__(self, spec: JobSpec, out: str, device: str = "cpu"):
        self.spec, self.out, self.device = spec, out, device
        s = spec.settings
        self.model = load_model(spec.model, s.get("site", "middle"), device)
        self.image_spec = ImageSpec(tuple(spec.size), spec.channels)
        self.steps = int(s.get("steps", 20))
        if spec.kind in ("edit", "inject"):
            self.schedule = edit_schedule(s, self.model.schedule.num_train_timesteps)
        if spec.kind == "edit":
            self.direction = Direction.load(s["direction"])
        if spec.kind == "inject":
            folder, name = os.path.split(s["content"])
            with torch.no_grad(), one_thread():
                self.content = invert(self.model, self._to_device(read_image(folder, name, self.image_spec)),
                                      self.steps, report=False).trajectory

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device)

    def _invert(self, x: torch.Tensor):
        s = self.spec.settings
        h_source = "reconstruction" if self.spec.kind == "capture" else "inversion"
        return invert(self.model, x, self.steps, refine_iters=int(s.get("refine_iters", 0)), h_source=h_source,
                      report=False)

    def item(self, item) -> dict:
        """One item's tensors: x_T and h (invert, capture, probe, pca) or the edited image (edit, inject)."""
        x = self._to_device(read_image(self.spec.inputs[item.source], item.name, self.image_spec))
        seed = item_seed(self.spec.seed, item.index)
        with torch.no_grad():
            inv = self._invert(x)
            s = self.spec.settings
            if self.spec.kind == "edit":
                return {"image": edit(self.model, inv.x_T, self.direction, float(s.get("strength", 1.0)),
                                      self.schedule, seed=seed)}
            if self.spec.kind == "inject":
                return {"image": inject(self.model, inv.x_T, self.content, float(s.get("gamma", 0.5)),
                                        self.schedule, seed=seed)}
            return {"x_T": inv.x_T, "trajectory": inv.trajectory}

    def run(self, shard: Shard) -> dict:
        """Compute ``shard`` and write its file(s), then its record (the mark that it is finished)."""
        started = time.perf_counter()
        results, done, problems = [], [], []
        with one_thread():
            for item in shard.items:
                try:
                    results.append(self.item(item))
                    done.append(item)
                except ImageProblem as problem:
                    problems.append([os.path.join(self.spec.inputs[item.source], problem.name), problem.reason])
            file = self._write(shard, done, results) if done else None
        record = {"shard": shard.index, "items": [i.index for i in done], "names": [i.name for i in done],
                  "problems": problems, "file": file, "seconds": round(time.perf_counter() - started, 3),
                  "worker": f"{socket.gethostname()}:{os.getpid()}"}
        write_json_atomic(os.path.join(self.out, "shards", f"{shard.index:05d}.json"), record)
        return record

    def _write(self, shard: Shard, done, results) -> str:
        name = f"{shard.index:05d}.safetensors"
        path = os.path.join(self.out, "shards", name)
        tmp = temporary_name(path)
        meta = {"items": [i.name for i in done], "indices": [i.index for i in done],
                "sources": [i.source for i in done], "job": self.spec.kind}
        if self.spec.kind in ("edit", "inject"):
            images = torch.cat([r["image"] for r in results]).float().cpu()
            os.makedirs(os.path.join(self.out, "images"), exist_ok=True)
            for item, image in zip(done, images):
                write_png(image, os.path.join(self.out, "images", os.path.splitext(item.name)[0] + ".png"))
            save_tensors(tmp, {"images": images}, "images", fingerprint=self.model.fingerprint,
                         made_with=self.schedule_label(), **meta)
        else:
            first: HTrajectory = results[0]["trajectory"]
            h = torch.cat([r["trajectory"].h for r in results], 1)
            trajectory = HTrajectory(first.timesteps, h, first.branches, first.fingerprint, first.source, first.site,
                                     first.dtype, made_with=first.made_with)
            if self.spec.kind == "pca":
                HMoments.of(trajectory).save(tmp)
            else:
                x_T = torch.cat([r["x_T"] for r in results]).float().cpu()
                save_tensors(tmp, {"h": trajectory.h.cpu(), "x_T": x_T}, "h_trajectory",
                             timesteps=list(trajectory.timesteps), branches=list(trajectory.branches),
                             fingerprint=trajectory.fingerprint, source=trajectory.source, site=trajectory.site,
                             made_with=trajectory.made_with, **meta)
        os.replace(tmp, path)
        return name

    def schedule_label(self) -> str:
        s = self.schedule
        return f"{s.num_steps} steps, t_edit={s.t_edit}, t_boost={s.t_boost}"
