"""U-Net passes each shipped workflow runs, against the minimum a perfect implementation needs; wall time.

    python -m benchmarks.workflow_passes [--workflows sd_style_mixing ...] [--steps 20] [--size 512]
                                         [--sd15] [--pass-time 16,64] [--out FILE]

Each workflow's API graph (workflows/api/*.json) runs in this process through ComfyUI's own node classes and this
pack's nodes (no server; SaveImage / PreviewImage / HSpaceSaveDirection are skipped).  Models are the test kit's:
the tiny SD1.5-format checkpoint from the e2e cache and the bundled pixel model; ``--sd15`` replaces the
checkpoint's MODEL by ComfyUI's SD1.5-architecture U-Net with random weights (860 M).  Forward hooks on the first
encoder layer and the last decoder layer count the rows that run through the encoder and through the decoder:
a plain pass of B images under CFG is 2B encoder rows and 2B decoder rows; an edited step of this pack adds the
edited rows to the decoder only.

The minimum is counted per node from the workflow's settings (``minimum_rows``): every sampling step the node's
used outputs need, one encoder row per image and branch, one decoder row per image and branch plus one per edited
row at an edited step, calibrated steps one more full pass; and nothing for outputs no other node reads.
``--pass-time`` times one plain pass at two latent sides (to extrapolate a wall time to another size).
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import statistics
import tempfile
import time

import torch

from hspace_core import timestep_grid
from .report import publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED = {"SaveImage", "PreviewImage", "HSpaceSaveDirection"}


def consumed_outputs(graph: dict) -> dict[str, set[int]]:
    """{node id: the output slots some other node reads}."""
    used: dict[str, set[int]] = {}
    for node in graph.values():
        for value in node["inputs"].values():
            if isinstance(value, list):
                used.setdefault(str(value[0]), set()).add(int(value[1]))
    return used


def _edited_steps(steps: int, t_edit: int, stride: int = 1) -> int:
    return len([t for t in timestep_grid(steps, 1000, "asyrp") if t >= t_edit][::stride])


def minimum_rows(node: dict, used: set[int], images: int) -> tuple[int, int] | None:
    """(encoder rows, decoder rows) a perfect implementation needs for this node (batch ``images``, CFG 1 as in
    every shipped workflow); None for a node whose passes are its algorithm (training)."""
    kind, p = node["class_type"], node["inputs"]
    n = p.get("steps", 0)
    if kind == "HSpaceDDIMInversion":
        rows = (n - 1) * (1 + p.get("refine_iters", 0)) * images
        if used & {2, 3} or p.get("h_source") == "reconstruction":  # reconstruction / PSNR read, or its h
            rows += n * images
        return rows, rows
    if kind == "HSpaceCapture":
        return n * images, n * images
    if kind in ("HSpaceAsyrpEdit", "HSpaceSlerpContentInject", "HSpaceDirectionExplorer"):
        edited = _edited_steps(n, p["t_edit"], p.get("stride", 1))
        calibrated = "calibration" in p
        if kind == "HSpaceAsyrpEdit":
            runs = [float(s) for s in (p.get("strength_sweep") or str(p["strength"])).split(",")]
        elif kind == "HSpaceDirectionExplorer":
            runs = [float(s) for s in p["strengths"].split(",")] * p.get("_directions", 1)
        else:
            runs = [1.0]
        enc = sum(n + (edited if calibrated else 0) for s in runs) * images
        dec = sum(n + (edited * (2 if calibrated else 1) if s else 0) for s in runs) * images
        return enc, dec
    if kind == "HSpaceInterpolate":
        edited = _edited_steps(n, p["t_edit"])
        frames = p["frames"]
        # two captures down to t_edit, then every frame: n steps, the edited ones with their edited rows
        return (2 * edited + frames * n) * images, (2 * edited + frames * (n + edited)) * images
    if kind == "HSpaceTrainAsyrpDirection":
        return None
    return 0, 0


class PassCounter:
    """Forward hooks counting rows through the first encoder layer and the last decoder layer of a U-Net."""

    def __init__(self):
        self.encoder = self.decoder = 0
        self.handles = []

    def watch(self, patcher) -> None:
        dm = patcher.get_model_object("diffusion_model")
        if getattr(dm, "hspace_pixel_unet", False):
            first, last = dm.unet.down_blocks[0].resnets[0], dm.unet.conv_out  # conv_in is replaced on replays
        else:
            first, last = dm.input_blocks[0][0], dm.out
        if any(getattr(h, "module", None) is first for h in self.handles):
            return

        def count(attr):
            def hook(module, args, output):
                setattr(self, attr, getattr(self, attr) + args[0].shape[0])
            return hook

        for module, attr in ((first, "encoder"), (last, "decoder")):
            handle = module.register_forward_hook(count(attr))
            handle.module = module
            self.handles.append(handle)

    def close(self):
        for handle in self.handles:
            handle.remove()


def setup_comfy():
    """ComfyUI in this process with this pack, the test kit's models and a copy of workflows/inputs as the input
    folder."""
    from harness.inprocess import load_pack

    load_pack()
    import folder_paths
    import nodes

    cache = os.path.expanduser(os.environ.get("HSPACE_E2E_MODELS", "~/.cache/hspace-nodes/e2e-models"))
    for kind in ("checkpoints", "diffusers", "open_clip"):
        folder_paths.add_model_folder_path(kind, os.path.join(cache, kind))
    inputs = tempfile.mkdtemp(prefix="hspace-inputs-")  # a copy: ComfyUI writes into its input folder (input/3d)
    shutil.copytree(os.path.join(REPO, "workflows", "inputs"), inputs, dirs_exist_ok=True)
    folder_paths.set_input_directory(inputs)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    import hspace_pack.nodes as pack_nodes

    classes = dict(nodes.NODE_CLASS_MAPPINGS)
    classes.update({cls.define_schema().node_id: cls for cls in pack_nodes.NODES})
    return classes


def call_node(cls, inputs: dict) -> tuple:
    if hasattr(cls, "FUNCTION"):  # a V1 node
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        return out["result"] if isinstance(out, dict) else out
    out = cls.execute(**inputs)
    if asyncio.iscoroutine(out):
        out = asyncio.run(out)
    return out.result


def run_graph(graph: dict, classes: dict, counter: PassCounter, model_override=None) -> dict:
    """Evaluate ``graph`` (API format); per node: seconds and (encoder, decoder) rows counted while it ran."""
    results, stats = {}, {}

    def value(node_id: str):
        if node_id in results:
            return results[node_id]
        node = graph[node_id]
        inputs = {k: (value(str(v[0]))[v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()
                  if not k.startswith("_")}
        for v in inputs.values():
            if hasattr(v, "get_model_object"):
                counter.watch(v)
        enc, dec, t0 = counter.encoder, counter.decoder, time.perf_counter()
        out = call_node(classes[node["class_type"]], inputs)
        if node["class_type"] == "CheckpointLoaderSimple" and model_override is not None:
            out = (model_override, *out[1:])
        settings = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}  # with "_" hints
        settings.update({k: v for k, v in inputs.items() if isinstance(v, (bool, int, float, str))})  # linked ones
        settings.update({k: True for k in ("calibration", "boost") if inputs.get(k) is not None})
        stats[node_id] = {"class_type": node["class_type"], "seconds": time.perf_counter() - t0,
                          "rows": (counter.encoder - enc, counter.decoder - dec), "settings": settings}
        results[node_id] = out
        return out

    with torch.inference_mode():
        for node_id, node in graph.items():
            if node["class_type"] not in SKIPPED:
                value(node_id)
    return stats


# The shipped CLIP training workflow asks for ViT-B-16 / openai (a download); the test kit's tiny open_clip stands in.
TINY_CLIP = {"clip_model": "hspace-tiny-clip", "clip_pretrained": "hspace-tiny-clip.safetensors"}


def prepared(path: str, steps: int | None, size: int | None) -> dict:
    graph = json.load(open(path))
    for node in graph.values():
        p = node["inputs"]
        p.update({k: v for k, v in TINY_CLIP.items() if k in p})
        if steps and "steps" in p and node["class_type"].startswith("HSpace"):
            p["steps"] = steps
        if size and node["class_type"] == "ImageScale":
            p["width"] = p["height"] = size
        if node["class_type"] == "HSpaceDirectionExplorer":  # one batched process per direction (for the minimum)
            source = graph[str(p["directions"][0])] if isinstance(p.get("directions"), list) else None
            p["_directions"] = source["inputs"].get("k", 1) if source else 1
    return graph


def images_of(graph: dict, node_id: str, cache: dict) -> int:
    """Batch size reaching a node: the number of LoadImage leaves batched into its image/latent input."""
    if node_id in cache:
        return cache[node_id]
    node = graph[node_id]
    if node["class_type"] == "LoadImage":
        return 1
    n = 0
    for key in ("image", "image1", "image2", "x_T", "style_x_T", "latent", "samples"):
        v = node["inputs"].get(key)
        if isinstance(v, list):
            n += images_of(graph, str(v[0]), cache) if key != "image2" or node["class_type"] == "ImageBatch" else 0
            if node["class_type"] != "ImageBatch":
                break
    if node["class_type"] == "LatentFromBatch":
        n = node["inputs"].get("length", 1)
    cache[node_id] = max(n, 1)
    return cache[node_id]


def measure_workflow(path: str, classes: dict, args, model_override=None) -> dict:
    graph = prepared(path, args.steps, args.size)
    counter = PassCounter()
    t0 = time.perf_counter()
    try:
        stats = run_graph(graph, classes, counter, model_override)
    finally:
        counter.close()
    wall = time.perf_counter() - t0
    used, cache = consumed_outputs(graph), {}
    total_min, algorithmic = [0, 0], []
    for node_id, s in stats.items():
        node = {"class_type": s["class_type"], "inputs": s["settings"]}
        m = minimum_rows(node, used.get(node_id, set()), images_of(graph, node_id, cache))
        s["minimum"] = m
        if m is None:
            algorithmic.append(s["class_type"])
            m = s["rows"]
        total_min[0] += m[0]
        total_min[1] += m[1]
    return {"name": os.path.splitext(os.path.basename(path))[0], "wall": wall, "stats": stats,
            "rows": tuple(map(sum, zip(*(s["rows"] for s in stats.values())))), "minimum": tuple(total_min),
            "algorithmic": algorithmic}


def pass_seconds(patcher, side: int, repeats: int = 1) -> float:
    """Median seconds of one plain cfg-1 pass of ``patcher`` at a ``side``² latent (through the adapter)."""
    from harness.inprocess import run_in_comfy

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, side, side, generator=g)
    text = [[torch.randn(1, 77, 768, generator=g), {}]]
    times = []

    def body(model, _x):
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.predict(x, 500)
            times.append(time.perf_counter() - t0)

    with torch.inference_mode():
        run_in_comfy(patcher, torch.zeros_like(x), body, positive=text, cfg=1.0)
    return statistics.median(times)


def report(results: list[dict], args, pass_times: dict) -> str:
    model = "ComfyUI SD1.5 architecture, random weights" if args.sd15 else "the test kit's tiny SD1.5 checkpoint"
    lines = [f"Counted by `python -m benchmarks.workflow_passes` (SD workflows on {model}; pixel workflows on the "
             f"bundled model; steps {args.steps or 'as shipped'}; SD image side {args.size or 'as shipped'}). "
             "Rows through the encoder / decoder (one row = one image in one CFG branch).", "",
             "| workflow | encoder rows | decoder rows | minimum (enc / dec) | extra | wall time (this CPU) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        (e, d), (me, md) = r["rows"], r["minimum"]
        extra = (e + d) / (me + md) - 1 if me + md else 0.0
        note = f" (training: {', '.join(r['algorithmic'])} counted as measured)" if r["algorithmic"] else ""
        lines.append(f"| {r['name']} | {e} | {d} | {me} / {md}{note} | {extra:+.0%} | {r['wall']:.1f} s |")
    lines += ["", "Where a node runs more than the minimum:", ""]
    for r in results:
        for node_id, s in r["stats"].items():
            if s["minimum"] is not None and tuple(s["rows"]) != tuple(s["minimum"]):
                lines.append(f"- {r['name']} node {node_id} ({s['class_type']}): {s['rows'][0]} / {s['rows'][1]} "
                             f"rows, minimum {s['minimum'][0]} / {s['minimum'][1]} ({s['seconds']:.1f} s)")
    if pass_times:
        lines += ["", "One plain cfg-1 pass through the adapter: " + ", ".join(
            f"{side}×{side} latent {sec:.2f} s" for side, sec in pass_times.items()) + "."]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflows", nargs="*", default=None, help="names under workflows/api (default: all)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="side of the SD workflows' images (ImageScale)")
    p.add_argument("--sd15", action="store_true", help="SD1.5-architecture random-weight U-Net for SD workflows")
    p.add_argument("--pass-time", default="", help="latent sides to time one plain pass at, e.g. 16,64 (with --sd15)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    classes = setup_comfy()
    names = args.workflows or [os.path.splitext(os.path.basename(f))[0]
                               for f in sorted(glob.glob(os.path.join(REPO, "workflows", "api", "*.json")))]
    override = None
    if args.sd15:
        from harness.inprocess import sd15_comfy_patcher

        override = sd15_comfy_patcher()
    results = []
    for name in names:
        results.append(measure_workflow(os.path.join(REPO, "workflows", "api", f"{name}.json"), classes, args, override))
        print(f"{name}: rows {results[-1]['rows']}, minimum {results[-1]['minimum']}, {results[-1]['wall']:.1f} s",
              flush=True)
    pass_times = {}
    if args.pass_time and override is not None:
        pass_times = {int(s): pass_seconds(override, int(s)) for s in args.pass_time.split(",")}
    publish(report(results, args, pass_times), args.out)


if __name__ == "__main__":
    main()
