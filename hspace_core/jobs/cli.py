"""``hspace`` (or ``python -m hspace_core.jobs``): the library's jobs over folders of images, resumable, on one
machine or a Ray cluster.  ``hspace <command> --help`` lists each command's options; docs/batch.md shows them."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..sites import SITES
from .images import ImageSpec, list_images, read_image
from .plan import JobSpec

log = logging.getLogger("hspace.jobs")


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--size takes HEIGHTxWIDTH or one number, e.g. 32x32, not {text!r}")
    return (parts[0], parts[-1])


def _common(p: argparse.ArgumentParser, sharded: bool = True) -> None:
    p.add_argument("--model", required=True, help="a diffusers U-Net folder (unet/ + scheduler/, e.g. "
                   "models/hspace-shapes-ddpm) or a checkpoint file the library loads")
    p.add_argument("--out", required=True, help="output folder (manifest, shards, results); rerun to resume")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--site", choices=SITES, default="middle", help="where h is read (default middle)")
    p.add_argument("--size", type=_size, help="HxW every image must be (default: the model's sample_size)")
    p.add_argument("--seed", type=int, default=0, help="job seed; each image's seed comes from it and its index")
    if not sharded:
        return
    p.add_argument("--shard-size", type=int, default=16, help="images per shard (default 16)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes, or Ray actors with --ray")
    p.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: its address (ray://host:10001, auto) "
                   "or 'local' (needs pip install 'hspace-nodes[cluster]')")
    p.add_argument("--device", default="cpu", help="torch device of local workers, e.g. cuda (default cpu; Ray "
                   "actors take a GPU when the cluster has one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hspace", description="The library's jobs over folders of images, resumable, on "
                                  "one machine or a Ray cluster (docs/batch.md). 'hspace <command> --help' for each.")
    sub = top.add_subparsers(dest="command", required=True)
    for name, text in (("invert", "DDIM-invert a folder: x_T and h along the inversion, per shard"),
                       ("capture", "invert a folder and read h along the reconstruction from x_T")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("folder")
        p.add_argument("--refine-iters", type=int, default=0, help="fixed-point refinement of each inversion step")
        _common(p)
    p = sub.add_parser("pca", help="principal h directions of a folder, from mergeable statistics",
                       description="PCA of h over a folder (Haas et al. 2023, global form), shard statistics merged")
    p.add_argument("folder")
    p.add_argument("--k", type=int, default=4, help="number of directions (default 4)")
    p.add_argument("--normalisation", choices=("position", "standardise", "none"), default="position")
    p.add_argument("--name", default="pca", help="direction name and file prefix")
    _common(p)
    p = sub.add_parser("probe", help="a direction from two labelled folders (linear probe)",
                       description="the normal of a linear classifier of h, positive folder vs negative folder")
    p.add_argument("--positive", required=True, help="folder of images with the attribute")
    p.add_argument("--negative", required=True, help="folder of images without it")
    p.add_argument("--method", choices=("logistic", "svm", "mean_difference"), default="logistic")
    p.add_argument("--form", choices=("global", "per_timestep"), default="global")
    p.add_argument("--name", default="probe")
    _common(p)
    p = sub.add_parser("edit", help="Asyrp edit of every image of a folder along a direction file")
    p.add_argument("folder")
    p.add_argument("--direction", required=True, help="a direction file (hspace pca / probe, Save Direction)")
    p.add_argument("--strength", type=float, default=1.0)
    _window(p)
    _common(p)
    p = sub.add_parser("inject", help="content injection: one content image's h into every image of a folder")
    p.add_argument("folder", help="the style images")
    p.add_argument("--content", required=True, help="the content image (same size)")
    p.add_argument("--gamma", type=float, default=0.5, help="Slerp weight γ in [0, 1] (default 0.5)")
    _window(p)
    _common(p)
    p = sub.add_parser("clip", help="train a direction from text with CLIP (Asyrp)",
                       description="Asyrp's CLIP direction training over every image of the folder, in this process "
                                   "or data-parallel on Ray (Ray Train)")
    p.add_argument("folder")
    p.add_argument("--source-text", required=True)
    p.add_argument("--target-text", required=True)
    p.add_argument("--clip", default="ViT-B-16", help="open_clip model name")
    p.add_argument("--pretrained", default="openai", help="open_clip weights: a tag or a local file")
    p.add_argument("--form", choices=("global", "per_timestep", "implicit"), default="global")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--t-edit", type=int, default=500)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (with --ray)")
    p.add_argument("--ray", metavar="ADDRESS", help="train data-parallel on a Ray cluster (ADDRESS or 'local')")
    _common(p, sharded=False)
    return top


def _window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--t-edit", type=int, default=400, help="edit for t ≥ t_edit (default 400)")
    p.add_argument("--t-boost", type=int, default=0, help="quality boost below t_boost (default 0: off)")


def _settings(args) -> dict:
    s = {"steps": args.steps, "site": args.site}
    if args.command in ("invert", "capture"):
        s["refine_iters"] = args.refine_iters
    if args.command == "pca":
        s.update(k=args.k, normalisation=args.normalisation, name=args.name)
    if args.command == "probe":
        s.update(method=args.method, form=args.form, name=args.name)
    if args.command in ("edit", "inject"):
        s.update(t_edit=args.t_edit, t_boost=args.t_boost)
    if args.command == "edit":
        s.update(direction=os.path.abspath(args.direction), strength=args.strength)
    if args.command == "inject":
        s.update(content=os.path.abspath(args.content), gamma=args.gamma)
    return s


def job_spec(args) -> JobSpec:
    """The job the arguments describe; the image size defaults to the model's sample_size."""
    from .models import in_channels, load_model, sample_size

    inputs = ({"positive": os.path.abspath(args.positive), "negative": os.path.abspath(args.negative)}
              if args.command == "probe" else {"images": os.path.abspath(args.folder)})
    size = args.size
    model = load_model(args.model, args.site)
    if size is None:
        size = sample_size(model)
    if size is None:
        raise ValueError(f"--model {args.model} does not say its image size: give --size HxW.")
    return JobSpec(args.command, inputs, os.path.abspath(args.model), _settings(args), args.shard_size, size,
                   in_channels(model), args.seed)


def _clip(args) -> tuple[list[str], list]:
    """CLIP direction training over the folder's images: in this process, or data-parallel with Ray Train."""
    import functools

    from ..clip_directions import DirectionTraining, load_open_clip
    from .models import load_model, sample_size
    from .training import ClipJob, train_here, train_on_ray, usable_images

    size = args.size or sample_size(load_model(args.model, args.site))
    config = DirectionTraining(form=args.form, num_steps=args.steps, inversion_steps=args.steps, t_edit=args.t_edit,
                               epochs=args.epochs, lr=args.lr, seed=args.seed)
    job = ClipJob(os.path.abspath(args.model), os.path.abspath(args.folder), size, args.source_text,
                  args.target_text, config, args.site)
    names, problems = usable_images(job)
    for path, reason in problems:
        log.error("skipped %s: %s", path, reason)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "direction.safetensors")
    if args.ray:
        train_on_ray(job, functools.partial(load_open_clip, args.clip, args.pretrained), names, args.out,
                     args.workers, args.ray)
    else:
        if args.workers != 1:
            raise ValueError("--workers for clip needs --ray (Ray Train); without it the training runs in this process.")
        train_here(job, load_open_clip(args.clip, args.pretrained), names).direction.save(path)
    return [path], problems


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from .job import run_job

    try:
        if args.command == "clip":
            outputs, problems = _clip(args)
        else:
            result = run_job(job_spec(args), args.out, workers=args.workers, ray=args.ray, device=args.device,
                             progress=not args.no_progress and sys.stderr.isatty())
            outputs, problems = result.outputs, result.problems
            log.info("%d images done (%d shards run, %d already finished) → %s", result.images, result.ran,
                     result.skipped, args.out)
    except KeyboardInterrupt:
        return 130
    except ValueError as error:
        log.error("hspace %s: %s", args.command, error)
        return 2
    for path in outputs:
        log.info("wrote %s", path)
    if problems:
        log.error("%d images were skipped (listed above and in %s)", len(problems),
                  os.path.join(args.out, "summary.json"))
        return 1
    return 0
