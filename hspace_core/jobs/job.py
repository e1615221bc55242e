"""A job from start to end: the manifest, the unfinished shards on an engine (with progress and one log line per
shard), a second pass for any shard a lost worker left unfinished, then the kind's result (PCA directions from the
merged statistics, a probe's direction) and ``summary.json``."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..file_format import load_tensors
from ..probes import probe_direction
from ..trajectory import HTrajectory
from .engines import run_in_pool, run_in_process, run_on_ray
from .moments import HMoments, merge_all
from .atomic import write_json_atomic
from .plan import JobSpec, Manifest
from .runner import check_job

log = logging.getLogger("hspace.jobs")


@dataclass(frozen=True)
class JobResult:
    """``images`` items done, ``problems`` [(file, reason)] skipped, ``outputs`` the result files, ``ran`` and
    ``skipped`` the shards computed by this run and found finished."""

    images: int
    problems: list
    outputs: list
    ran: int
    skipped: int


class _Progress:
    """A tqdm bar over images (rate and ETA) when tqdm is installed and ``show`` is on; log lines either way."""

    def __init__(self, total: int, initial: int, show: bool):
        self.bar = None
        if show:
            try:
                from tqdm import tqdm
            except ImportError:
                log.info("tqdm is not installed: progress is reported per shard only.")
            else:
                self.bar = tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_job(spec: JobSpec, out: str, *, workers: int = 1, ray: str | None = None, device: str = "cpu",
            progress: bool = True, attempts: int = 3) -> JobResult:
    """Run ``spec`` into ``out``: shards already finished there are skipped; with ``ray`` (an address or "local")
    on a Ray cluster with ``workers`` actors (on GPUs when it has them), else in ``workers`` local processes (1:
    this process) on ``device``."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a whole number ≥ 1, got {workers!r}.")
    check_job(spec)
    manifest = Manifest.open(out, spec)
    shards = manifest.shards
    finished = {s.index for s in shards if manifest.record(s.index) is not None}
    skipped = len(finished)
    images_before = sum(len(s.items) for s in shards if s.index in finished)
    log.info("%s: %d images in %d shards of %d; %d shards already finished in %s", spec.kind, len(manifest.items),
             len(shards), spec.shard_size, skipped, out)
    bar = _Progress(len(manifest.items), images_before, progress)

    def on_done(record: dict) -> None:
        if record["shard"] in finished:  # a retried shard reported twice: its files were replaced, not added to
            return
        finished.add(record["shard"])
        bar.update(len(record["items"]) + len(record["problems"]))
        log.info("shard %d/%d: %d images%s in %.1f s (%s)%s", record["shard"] + 1, len(shards), len(record["items"]),
                 f", {len(record['problems'])} skipped" if record["problems"] else "", record["seconds"],
                 record["worker"], f" → {record['file']}" if record["file"] else "")

    try:
        for attempt in range(attempts):
            pending = [s for s in shards if manifest.record(s.index) is None]
            if not pending:
                break
            if attempt:
                log.warning("%d shards are unfinished after a worker was lost; running them again.", len(pending))
            if ray:
                run_on_ray(spec, out, pending, on_done, workers, ray)
            elif workers > 1:
                run_in_pool(spec, out, pending, on_done, workers, device)
            else:
                run_in_process(spec, out, pending, on_done, device)
    except KeyboardInterrupt:
        done = sum(manifest.record(s.index) is not None for s in shards)
        log.warning("Interrupted: %d of %d shards are finished in %s; run the same command again to resume.", done,
                    len(shards), out)
        raise
    finally:
        bar.close()
    unfinished = [s.index for s in shards if manifest.record(s.index) is None]
    if unfinished:
        raise RuntimeError(f"Shards {unfinished[:10]} are still unfinished after {attempts} attempts; see the log "
                           "above for the workers' errors, and run the command again to resume.")
    records = [manifest.record(s.index) for s in shards]
    problems = [p for r in records for p in r["problems"]]
    outputs = REDUCERS.get(spec.kind, lambda *_: [])(spec, out, records)
    result = JobResult(sum(len(r["items"]) for r in records), problems, outputs, len(shards) - skipped, skipped)
    write_json_atomic(os.path.join(out, "summary.json"),
                      {"kind": spec.kind, "images": result.images, "problems": problems, "outputs": outputs,
                       "shards": [r["file"] for r in records]})
    for path, reason in problems:
        log.error("skipped %s: %s", path, reason)
    return result


def _shard_files(out: str, records: list[dict]) -> list[str]:
    return [os.path.join(out, "shards", r["file"]) for r in records if r["file"]]


def _pca(spec: JobSpec, out: str, records: list[dict]) -> list[str]:
    """Merge the shards' statistics in shard order, then the top-k directions (and the merged statistics)."""
    s = spec.settings
    moments = merge_all(HMoments.load(path) for path in _shard_files(out, records))
    directions = moments.directions(int(s.get("k", 4)), normalisation=s.get("normalisation", "position"),
                                    name=s.get("name", "pca"))
    os.makedirs(os.path.join(out, "directions"), exist_ok=True)
    moments.save(os.path.join(out, "moments.safetensors"))
    paths = []
    for i, direction in enumerate(directions):
        paths.append(os.path.join(out, "directions", f"{s.get('name', 'pca')}-{i}.safetensors"))
        direction.save(paths[-1])
    return paths


def _probe(spec: JobSpec, out: str, records: list[dict]) -> list[str]:
    """Every shard's h (a probe fits on all rows at once), split by class, then ``probes.probe_direction``."""
    s = spec.settings
    rows = {"positive": [], "negative": []}
    first = None
    for path in _shard_files(out, records):
        trajectory = HTrajectory.load(path)
        first = first or trajectory
        _, meta = load_tensors(path, "h_trajectory")
        for k, source in enumerate(meta["sources"]):
            rows[source].append(trajectory.h[:, k:k + 1])
    if not rows["positive"] or not rows["negative"]:
        raise ValueError("A probe needs images of both classes; every positive or every negative image was skipped.")
    positive, negative = (HTrajectory(first.timesteps, torch.cat(rows[c], 1), first.branches, first.fingerprint,
                                      first.source, first.site, first.dtype, made_with=first.made_with)
                          for c in ("positive", "negative"))
    direction = probe_direction(positive, negative, s.get("method", "logistic"), form=s.get("form", "global"),
                                name=s.get("name", "probe"))
    path = os.path.join(out, "direction.safetensors")
    direction.save(path)
    return [path]


REDUCERS = {"pca": _pca, "probe": _probe}
