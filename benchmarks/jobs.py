"""Folder inversion throughput of ``hspace invert`` on the bundled model: one process, N local worker processes and
a local Ray cluster, from one run (``python -m benchmarks.jobs --images 48 --workers 2``; docs/benchmarks.md).

End to end is the wall time of ``run_job`` (worker start and model loading included); per-shard compute is the sum
of the shards' own seconds, so the difference between engines is their overhead."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from hspace_core.jobs import JobSpec, run_job

from .report import publish

BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "hspace-shapes-ddpm")


def shape_folder(folder: str, count: int) -> None:
    from PIL import Image

    from hspace_demo.images import to_uint8
    from hspace_demo.shapes import make_batch

    for i, array in enumerate(to_uint8(torch.from_numpy(make_batch(count, seed=5)[0]))):
        Image.fromarray(array).save(os.path.join(folder, f"img{i:03d}.png"))


def measure(spec: JobSpec, out: str, **engine) -> dict:
    started = time.perf_counter()
    result = run_job(spec, out, progress=False, **engine)
    wall = time.perf_counter() - started
    records = [json.load(open(os.path.join(out, "shards", f))) for f in sorted(os.listdir(os.path.join(out, "shards")))
               if f.endswith(".json")]
    return {"images": result.images, "wall": wall, "compute": sum(r["seconds"] for r in records)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shard-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        shape_folder(folder, args.images)
        spec = JobSpec("invert", {"images": folder}, BUNDLED, {"steps": args.steps, "site": "middle"},
                       args.shard_size, (32, 32))
        runs = {"1 process": measure(spec, os.path.join(tmp, "one")),
                f"{args.workers} local workers": measure(spec, os.path.join(tmp, "pool"), workers=args.workers)}
        if not args.no_ray:
            from hspace_core.jobs.engines import connect_ray

            started = time.perf_counter()
            connect_ray("local", num_cpus=args.workers)
            ray_start = time.perf_counter() - started
            runs[f"local Ray, {args.workers} actors"] = measure(spec, os.path.join(tmp, "ray"), ray="local",
                                                               workers=args.workers)
    base = runs["1 process"]["images"] / runs["1 process"]["wall"]
    lines = [f"Measured by `python -m benchmarks.jobs --images {args.images} --workers {args.workers}`: `invert` of "
             f"{args.images} 32×32 images, {args.steps} steps, shards of {args.shard_size}, bundled model, "
             f"{os.cpu_count()} CPU cores (1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
             f"after: other work shared them), one torch thread per worker, torch {torch.__version__}.", "",
             "| engine | images/s end to end | vs 1 process | shard compute, s | end-to-end overhead, s |",
             "|---|---|---|---|---|"]
    for name, run in runs.items():
        rate = run["images"] / run["wall"]
        lines.append(f"| {name} | {rate:.2f} | {rate / base:.2f}× | {run['compute']:.1f} | "
                     f"{run['wall'] - run['compute'] / (1 if name == '1 process' else args.workers):.1f} |")
    if not args.no_ray:
        ray_rate = runs[f"local Ray, {args.workers} actors"]
        pool = runs[f"{args.workers} local workers"]
        lines += ["", f"Ray against {args.workers} local workers: {ray_rate['wall'] / pool['wall']:.2f}× the wall "
                      f"time ({ray_rate['wall']:.1f} s vs {pool['wall']:.1f} s; `ray.init` itself took "
                      f"{ray_start:.1f} s and is not included)."]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
