"""Batch jobs on a local Ray cluster (``ray.init(num_cpus=2)``, one per module): invert, PCA and a folder edit are
bit-identical to the in-process run, and a Ray worker killed mid-job loses and duplicates nothing."""
import dataclasses
import json
import os
import signal
import threading
import time

import pytest
import torch

import hspace_core as hs
from hspace_core.jobs import run_job
from hspace_core.jobs.engines import connect_ray

from jobs_helpers import library_inversion, shape_folder, shard_tensors, spec

ray = pytest.importorskip("ray", reason="Ray is the [cluster] extra (requirements-dev.txt installs it)")


@pytest.fixture(scope="module")
def cluster():
    connect_ray("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return shape_folder(str(tmp_path_factory.mktemp("shapes")), 8)


def same_outputs(a: str, b: str) -> None:
    x, y = shard_tensors(a), shard_tensors(b)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_invert_pca_and_edit_on_ray_are_bit_identical_to_one_process(cluster, folder, tmp_path):
    direction = hs.pca_directions([library_inversion(folder, n).trajectory for n in sorted(os.listdir(folder))[:4]],
                                  1)[0]
    path = str(tmp_path / "d.safetensors")
    direction.save(path)
    jobs = {"invert": spec("invert", folder, shard_size=3),
            "pca": spec("pca", folder, shard_size=3, k=2),
            "edit": spec("edit", folder, shard_size=3, seed=3, direction=path, strength=1.0, t_edit=600, t_boost=300)}
    for kind, job in jobs.items():
        local, remote = str(tmp_path / f"{kind}-local"), str(tmp_path / f"{kind}-ray")
        here = run_job(job, local, progress=False)
        there = run_job(job, remote, ray="local", workers=2, progress=False)
        assert (there.images, there.ran, there.problems) == (8, 3, [])
        workers = {json.load(open(os.path.join(remote, "shards", f"{i:05d}.json")))["worker"] for i in range(3)}
        assert all(w.split(":")[1] != str(os.getpid()) for w in workers)  # computed by Ray actors, not here
        if kind == "pca":
            for a, b in zip(here.outputs, there.outputs):
                assert torch.equal(hs.Direction.load(a).delta, hs.Direction.load(b).delta)
        else:
            same_outputs(local, remote)


def _ray_workers() -> list[int]:
    """The pids of the job's Ray Data actors (their process title names the actor class)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "RayShardWorker" in title:
            found.append(int(pid))
    return found


def test_a_killed_ray_worker_loses_and_duplicates_nothing(cluster, folder, tmp_path):
    job, out = spec("invert", folder, shard_size=1), str(tmp_path / "killed")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(job, out, ray="local", workers=2,
                                                                           progress=False)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        records = [f for f in os.listdir(os.path.join(out, "shards"))] if os.path.isdir(os.path.join(out, "shards")) else []
        if any(f.endswith(".json") for f in records) and (workers := _ray_workers()):
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)  # mid-job: at least one shard is finished, others are not
        time.sleep(0.2)
    thread.join(timeout=400)
    assert killed is not None, "no Ray worker was found to kill"
    result = outcome["result"]
    records = [json.load(open(os.path.join(out, "shards", f"{i:05d}.json"))) for i in range(8)]
    indices = [i for r in records for i in r["items"]]
    assert sorted(indices) == list(range(8)) and result.images == 8  # nothing lost, nothing twice
    assert shard_tensors(out)["x_T"].shape[0] == 8
    local = str(tmp_path / "local")
    run_job(job, local, progress=False)
    same_outputs(local, out)


def test_clip_training_on_ray_train_averages_gradients_like_one_batch(cluster, tmp_path):
    """2 Ray Train workers, one image each per step, gradients all-reduced = one process with batches of 2 (the
    same images per step); equal up to the float difference of batch-1 and batch-2 U-Net passes.  With the plain
    CLIP loss: the official −log((2 − L)/2) of a batch's mean L is not the mean of the workers' (2.7% of the move
    apart, measured), as under any data-parallel training."""
    from harness.tiny import tiny_clip

    from hspace_core.clip_directions import DirectionTraining
    from hspace_core.jobs.training import ClipJob, train_here, train_on_ray, usable_images

    from jobs_helpers import BUNDLED, STEPS

    folder = shape_folder(str(tmp_path / "four"), 4)
    config = DirectionTraining(form="global", num_steps=STEPS, inversion_steps=STEPS, t_edit=500, epochs=1, lr=0.5,
                                log_clip_loss=False)
    job = ClipJob(BUNDLED, folder, (32, 32), "a photo", "a red photo", config)
    names, problems = usable_images(job)
    assert (len(names), problems) == (4, [])
    ray_direction = train_on_ray(job, tiny_clip, names, str(tmp_path / "ray"), 2, "local")
    batch_of_two = dataclasses.replace(job, config=dataclasses.replace(config, batch_size=2))
    here = train_here(batch_of_two, tiny_clip(), names).direction  # batches [0, 1], [2, 3]: worker 0 takes 0, 2
    start = torch.randn(here.delta.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    moved = (here.delta - start).abs().max()
    assert moved > 1e-3
    assert (ray_direction.delta - here.delta).abs().max() <= 1e-3 * moved
    assert ray_direction.metadata["workers"] == 2 and ray_direction.metadata["images"] == 4
