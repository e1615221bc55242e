"""Where shards run: in this process, in N local worker processes, or on a Ray cluster (Ray Data: one model per
actor, GPU actors where the cluster has GPUs).  Every engine takes the pending shards and calls ``on_done(record)``
in the driver as each finishes; the files are written by the workers themselves (atomically, under ``out``, which a
cluster's nodes must share)."""
from __future__ import annotations

import json
import logging
import os
from typing import Callable

from .plan import JobSpec, Shard
from .runner import ShardRunner

log = logging.getLogger("hspace.jobs")

RAY_INSTALL = ("Ray is not installed: pip install 'hspace-nodes[cluster]' (or pip install 'ray[data,train]') "
               "to run jobs on a Ray cluster; without --ray the job runs on this machine.")


def run_in_process(spec: JobSpec, out: str, shards: list[Shard], on_done: Callable[[dict], None],
                   device: str = "cpu") -> None:
    if not shards:
        return
    runner = ShardRunner(spec, out, device)
    for shard in shards:
        on_done(runner.run(shard))


_worker: ShardRunner | None = None


def _pool_start(spec_json: str, out: str, device: str) -> None:
    global _worker
    _worker = ShardRunner(JobSpec.from_json(json.loads(spec_json)), out, device)


def _pool_run(shard_json: dict) -> dict:
    return _worker.run(Shard.from_json(shard_json))


def run_in_pool(spec: JobSpec, out: str, shards: list[Shard], on_done: Callable[[dict], None], workers: int,
                device: str = "cpu") -> None:
    """``workers`` spawned processes, each loading the model once; Ctrl-C ends them (their half-written temporary
    files are removed by the next run)."""
    import multiprocessing

    if not shards:
        return
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(shards)), _pool_start,
                                                     (json.dumps(spec.to_json()), out, device))
    try:
        for record in pool.imap_unordered(_pool_run, [s.to_json() for s in shards]):
            on_done(record)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def ray_worker_class(spec: JobSpec, out: str, device: str):
    """The Ray Data actor class of a job: one ``ShardRunner`` (one model) for the actor's life.  The job travels in
    the class itself, not as constructor arguments in the object store, so a restarted actor can always rebuild."""
    spec_json = json.dumps(spec.to_json())

    class RayShardWorker:
        def __init__(self):
            self.runner = ShardRunner(JobSpec.from_json(json.loads(spec_json)), out, device)

        def __call__(self, batch: dict) -> dict:
            records = [self.runner.run(Shard.from_json(json.loads(s))) for s in batch["shard"]]
            return {"record": [json.dumps(r) for r in records]}

    return RayShardWorker


def import_ray():
    try:
        import ray
    except ImportError:
        raise SystemExit(RAY_INSTALL) from None
    return ray


def connect_ray(address: str, num_cpus: int | None = None):
    """``ray.init`` for ``address`` ("local": a cluster on this machine with ``num_cpus`` CPUs; else a cluster's
    address, e.g. ray://head:10001 or auto), with this copy of ``hspace_core`` shipped to the workers."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if address == "local":
        env = {"env_vars": {"PYTHONPATH": os.path.dirname(package)}}
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, logging_level=logging.WARNING,
                 log_to_driver=False)
    else:
        ray.init(address=address, runtime_env={"py_modules": [package]}, logging_level=logging.WARNING)
    return ray


def run_on_ray(spec: JobSpec, out: str, shards: list[Shard], on_done: Callable[[dict], None], workers: int,
               address: str) -> None:
    """The shards as a Ray Dataset mapped by a pool of ``workers`` actors (Ray Data restarts a lost actor and retries
    its shard: its actors' max_restarts and max_task_retries default to −1; the driver reruns any shard still
    unfinished afterwards)."""
    if not shards:
        return
    ray = connect_ray(address, num_cpus=workers if address == "local" else None)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    device = "cuda" if gpus else "cpu"
    log.info("Ray: %d actor(s) on %s (%s)", workers, address, "GPU" if gpus else "CPU")
    dataset = ray.data.from_items([{"shard": json.dumps(s.to_json())} for s in shards],
                                  override_num_blocks=len(shards))
    mapped = dataset.map_batches(ray_worker_class(spec, out, device), batch_size=1,
                                 compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus)
    for row in mapped.iter_rows():
        on_done(json.loads(row["record"]))
