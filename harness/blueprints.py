"""The pack's blueprints, ``subgraphs/*.json``: ready-made subgraphs for the three main jobs, each showing only the
knobs an artist turns.

    python -m harness.blueprints            # rewrite subgraphs/*.json
    python -m harness.blueprints --check    # exit 1 if any of them is stale

ComfyUI (0.3.75 and 0.33.0 alike) finds ``custom_nodes/<pack>/subgraphs/*.json`` (``app/subgraph_manager.py``) and serves them at
``/global_subgraphs``; the editor offers them in the node library.  Each file is a workflow with one subgraph node
whose definition (``definitions.subgraphs[0]``) holds the inner graph; the inner nodes' widgets the artist turns are
subgraph inputs promoted to widgets (``properties.proxyWidgets``), everything else keeps the nodes' defaults.  The
inner graphs are written below as API graphs; ``build`` lays them out as the editor saves subgraphs, from the
nodes' ``/object_info`` entries.  ``expand`` turns a prompt that uses a blueprint into the flat prompt it stands for,
as the editor's graphToPrompt does (inner node ids ``<subgraph node id>:<inner id>``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import uuid
from dataclasses import dataclass

from .node_docs import node_infos, stale_files, write_files
from .server import REPO
from .ui_to_api import ui_to_api

FOLDER = os.path.join(REPO, "subgraphs")
COMMAND = "python -m harness.blueprints"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
INPUT_NODE, OUTPUT_NODE = -10, -20
NAMESPACE = uuid.UUID("5b1f0d3c-3a51-4d8e-9a55-4e2f1c0b7a11")  # stable ids: regenerating changes nothing


@dataclass(frozen=True)
class Blueprint:
    name: str  # the editor shows the file's name as the blueprint's name (frontend 1.49's loadGlobalBlueprint)
    description: str
    aliases: tuple  # the node search's words for it (extra.BlueprintSearchAliases)
    inputs: tuple  # (name, type, label): sockets of the subgraph node; ("in", name) in ``graph`` reads them
    knobs: tuple  # (name, type, default, label): promoted widgets; ("knob", name) in ``graph`` reads them
    graph: dict  # API graph of the inner nodes
    outputs: tuple  # (name, type, (inner node, slot))
    category: str = "H-Space"

    @property
    def file(self) -> str:
        return f"{self.name}.json"


def _inversion(image: str) -> dict:
    return {"class_type": "HSpaceDDIMInversion",
            "inputs": {"model": ("in", "model"), "image": ("in", image), "vae": ("in", "vae"),
                       "positive": ("in", "positive"), "steps": ("knob", "steps"), "refine_iters": 1}}


MODEL_INPUTS = (("model", "MODEL", "model"), ("vae", "VAE", "vae"))
POSITIVE = ("positive", "CONDITIONING", "positive (SD models)")
STEPS = ("steps", "INT", 40, "steps")

BLUEPRINTS = (
    Blueprint(
        "H-Space Style Mixing",
        "The content image's layout in the style image's look (DiffStyle / InjectFusion): both images are inverted, "
        "the content's h is injected by Slerp into the style image's regeneration, with style calibration.",
        ("style transfer", "style mixing", "DiffStyle", "InjectFusion", "content injection", "h-space"),
        (*MODEL_INPUTS, ("content", "IMAGE", "content image"), ("style", "IMAGE", "style image"), POSITIVE),
        (("gamma", "FLOAT", 0.5, "content strength (γ)"), ("t_edit", "INT", 400, "mix down to t_edit"),
         ("omega", "FLOAT", 0.3, "style calibration (ω)"), STEPS),
        {"content": _inversion("content"), "style": _inversion("style"),
         "calibration": {"class_type": "HSpaceStyleCalibrate", "inputs": {"omega": ("knob", "omega")}},
         "mix": {"class_type": "HSpaceSlerpContentInject",
                 "inputs": {"model": ("in", "model"), "style_x_T": ["style", 0], "content": ["content", 1],
                            "gamma": ("knob", "gamma"), "t_edit": ("knob", "t_edit"), "steps": ("knob", "steps"),
                            "calibration": ["calibration", 0], "positive": ("in", "positive")}},
         "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["mix", 0], "vae": ("in", "vae")}}},
        (("image", "IMAGE", ("decode", 0)),)),
    Blueprint(
        "H-Space Edit Along a Direction",
        "An image edited along an h-space direction (Asyrp): the image is inverted and regenerated with "
        "h + strength·Δh for t ≥ t_edit, by the asymmetric reverse process.",
        ("Asyrp", "image editing", "semantic edit", "h-space direction", "inversion"),
        (*MODEL_INPUTS, ("image", "IMAGE", "image"), ("direction", "HSPACE_DIRECTION", "direction"), POSITIVE),
        (("strength", "FLOAT", 1.0, "strength"), ("t_edit", "INT", 400, "edit down to t_edit"), STEPS),
        {"invert": _inversion("image"),
         "edit": {"class_type": "HSpaceAsyrpEdit",
                  "inputs": {"model": ("in", "model"), "x_T": ["invert", 0], "direction": ("in", "direction"),
                             "strength": ("knob", "strength"), "t_edit": ("knob", "t_edit"),
                             "steps": ("knob", "steps"), "positive": ("in", "positive")}},
         "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["edit", 0], "vae": ("in", "vae")}}},
        (("image", "IMAGE", ("decode", 0)),)),
    Blueprint(
        "H-Space Invert and Reconstruct",
        "DDIM inversion of an image to x_T, with the h trajectory along it and the image x_T regenerates (its PSNR "
        "says how faithful): the start of every h-space edit and mix.",
        ("inversion", "invert", "DDIM inversion", "reconstruct", "h-space"),
        (*MODEL_INPUTS, ("image", "IMAGE", "image"), POSITIVE),
        (STEPS,),
        {"invert": _inversion("image"),
         "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["invert", 2], "vae": ("in", "vae")}}},
        (("reconstruction", "IMAGE", ("decode", 0)), ("x_T", "LATENT", ("invert", 0)),
         ("trajectory", "HSPACE_TRAJECTORY", ("invert", 1)), ("psnr", "FLOAT", ("invert", 3)))),
)


def _id(*parts) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(map(str, parts))))


def _specs(info: dict):
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            yield name, spec[0], (spec[1] if len(spec) > 1 else {}), section == "optional"


def _is_widget(kind, options) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def build(bp: Blueprint, object_info: dict) -> dict:
    """The blueprint file: one subgraph node, its definition holding the inner nodes as the editor saves them."""
    ids = {key: i + 1 for i, key in enumerate(bp.graph)}
    knob_default = {name: default for name, _, default, _ in bp.knobs}
    sources = [(name, kind, label, False) for name, kind, label in bp.inputs] + \
              [(name, kind, label, True) for name, kind, _, label in bp.knobs]
    slot_of = {name: i for i, (name, *_) in enumerate(sources)}
    links, by_target, next_link = [], {}, [0]

    def link(origin, origin_slot, target, target_slot, kind):
        next_link[0] += 1
        links.append({"id": next_link[0], "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
                      "target_slot": target_slot, "type": kind})
        by_target[(target, target_slot)] = next_link[0]
        return next_link[0]

    nodes, out_links = [], {}
    for order, (key, node) in enumerate(bp.graph.items()):
        info = object_info[node["class_type"]]
        inputs, values = [], []
        for slot, (name, kind, options, optional) in enumerate(_specs(info)):
            given = node["inputs"].get(name)
            kind_name = "COMBO" if isinstance(kind, list) else kind
            entry = {"localized_name": name, "name": name, "type": kind_name, "link": None}
            if optional and not _is_widget(kind, options):
                entry["shape"] = 7
            if _is_widget(kind, options):
                entry["widget"] = {"name": name}
                value = knob_default[given[1]] if isinstance(given, tuple) else given
                values.append(options.get("default") if value is None else value)
                if options.get("control_after_generate"):
                    values.append("fixed")
            if isinstance(given, tuple):  # ("in", name) or ("knob", name): from the subgraph's input node
                entry["link"] = link(INPUT_NODE, slot_of[given[1]], ids[key], slot, kind_name)
            elif isinstance(given, list):  # [inner node, slot]
                source = bp.graph[given[0]]["class_type"]
                entry["link"] = link(ids[given[0]], given[1], ids[key], slot,
                                     object_info[source]["output"][given[1]])
                out_links.setdefault((ids[given[0]], given[1]), []).append(entry["link"])
            inputs.append(entry)
        nodes.append({"id": ids[key], "type": node["class_type"], "pos": [400 * order, 0], "size": [320, 200],
                      "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [],
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values})
    for slot, (name, kind, (key, source_slot)) in enumerate(bp.outputs):
        out_links.setdefault((ids[key], source_slot), []).append(link(ids[key], source_slot, OUTPUT_NODE, slot, kind))
    for node in nodes:
        info = object_info[node["type"]]
        names = info.get("output_name") or info["output"]
        node["outputs"] = [{"localized_name": n, "name": n, "type": t, "links": out_links.get((node["id"], i), [])}
                           for i, (n, t) in enumerate(zip(names, info["output"]))]
    subgraph_id = _id(bp.file)
    sg_inputs = [{"id": _id(bp.file, "in", name), "name": name, "type": kind, "localized_name": name, "label": label,
                  "linkIds": [l["id"] for l in links if l["origin_id"] == INPUT_NODE and l["origin_slot"] == i],
                  "pos": [-200, 20 * i]} for i, (name, kind, label, _) in enumerate(sources)]
    sg_outputs = [{"id": _id(bp.file, "out", name), "name": name, "type": kind, "localized_name": name, "label": name,
                   "linkIds": [l["id"] for l in links if l["target_id"] == OUTPUT_NODE and l["target_slot"] == i],
                   "pos": [400 * len(nodes) + 20, 20 * i]} for i, (name, kind, _) in enumerate(bp.outputs)]
    instance = {
        "id": 1, "type": subgraph_id, "pos": [0, 0], "size": [320, 60 + 26 * len(sources)], "flags": {}, "order": 0,
        "mode": 0,
        "inputs": [{"label": label, "localized_name": name, "name": name, "type": kind, "link": None,
                    **({"widget": {"name": name}} if knob else {})} for name, kind, label, knob in sources],
        "outputs": [{"label": name, "localized_name": name, "name": name, "type": kind, "links": []}
                    for name, kind, _ in bp.outputs],
        "properties": {"proxyWidgets": [["-1", name] for name, *_ in bp.knobs]},
        "widgets_values": [default for _, _, default, _ in bp.knobs],
        "title": bp.name,
    }
    return {
        "revision": 0, "last_node_id": 1, "last_link_id": 0, "nodes": [instance], "links": [], "version": 0.4,
        "definitions": {"subgraphs": [{
            "id": subgraph_id, "version": 1,
            "state": {"lastGroupId": 0, "lastNodeId": len(nodes), "lastLinkId": next_link[0], "lastRerouteId": 0},
            "revision": 0, "config": {}, "name": bp.name,
            "inputNode": {"id": INPUT_NODE, "bounding": [-320, -20, 120, 40 + 20 * len(sources)]},
            "outputNode": {"id": OUTPUT_NODE, "bounding": [400 * len(nodes), -20, 120, 40 + 20 * len(bp.outputs)]},
            "inputs": sg_inputs, "outputs": sg_outputs, "widgets": [], "nodes": nodes, "groups": [], "links": links,
            "extra": {}, "category": bp.category, "description": bp.description}]},
        "extra": {"BlueprintDescription": bp.description, "BlueprintSearchAliases": list(bp.aliases)},
    }


def knobs_of(blueprint: dict) -> dict:
    """{knob: value} of a blueprint file's subgraph node (its promoted widgets)."""
    instance = blueprint["nodes"][0]
    return dict(zip((name for _, name in instance["properties"]["proxyWidgets"]), instance["widgets_values"]))


def subgraph_id(blueprint: dict) -> str:
    return blueprint["definitions"]["subgraphs"][0]["id"]


def expand(prompt: dict, blueprints: list[dict], object_info: dict) -> dict:
    """``prompt`` with every node whose class_type is a blueprint's subgraph id replaced by its inner nodes (ids
    ``<node id>:<inner id>``): the subgraph node's inputs (links or knob values) feed the inner inputs linked from
    the subgraph's input node, and links to its outputs are redirected to the inner nodes that make them."""
    definitions = {subgraph_id(d): d["definitions"]["subgraphs"][0] for d in blueprints}
    flat, outputs_of = {}, {}
    for node_id, node in prompt.items():
        sg = definitions.get(node["class_type"])
        if sg is None:
            flat[node_id] = json.loads(json.dumps(node))
            continue
        table = [[l["id"], l["origin_id"], l["origin_slot"], l["target_id"], l["target_slot"], l["type"]]
                 for l in sg["links"] if l["target_id"] != OUTPUT_NODE]
        inner = ui_to_api({"nodes": sg["nodes"], "links": table}, object_info)
        names = [i["name"] for i in sg["inputs"]]
        for inner_id, inner_node in inner.items():
            inputs = {}
            for name, value in inner_node["inputs"].items():
                if isinstance(value, list) and value[0] == str(INPUT_NODE):
                    outer = node["inputs"].get(names[value[1]])
                    if outer is None:
                        continue  # an unconnected subgraph input: the inner input is unconnected too
                    value = outer
                elif isinstance(value, list):
                    value = [f"{node_id}:{value[0]}", value[1]]
                inputs[name] = value
            flat[f"{node_id}:{inner_id}"] = {"class_type": inner_node["class_type"], "inputs": inputs}
        for l in sg["links"]:
            if l["target_id"] == OUTPUT_NODE:
                outputs_of[(node_id, l["target_slot"])] = [f"{node_id}:{l['origin_id']}", l["origin_slot"]]
    for node in flat.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and (str(value[0]), value[1]) in outputs_of:
                node["inputs"][name] = outputs_of[(str(value[0]), value[1])]
    return flat


def object_info_in_process() -> dict:
    """The ``/object_info`` entries of the pack's nodes and of the core nodes the blueprints use."""
    infos = {info["name"]: info for info in node_infos()}  # so `nodes` below is core's, not this repository's
    import nodes as core

    for name in {n["class_type"] for bp in BLUEPRINTS for n in bp.graph.values()} - set(infos):
        cls = core.NODE_CLASS_MAPPINGS[name]
        infos[name] = {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                       "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)}
    return infos


def files(object_info: dict) -> dict[str, str]:
    return {os.path.join(FOLDER, bp.file): json.dumps(build(bp, object_info), indent=1, ensure_ascii=False) + "\n"
            for bp in BLUEPRINTS}


def stale(wanted: dict[str, str]) -> list[str]:
    """The blueprint files that are missing, differ from ``wanted``, or are no blueprint's any more."""
    return stale_files(wanted) + sorted(set(glob.glob(os.path.join(FOLDER, "*.json"))) - set(wanted))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if subgraphs/*.json differ from what this writes")
    args = p.parse_args(argv)
    wanted = files(object_info_in_process())
    if args.check:
        found = stale(wanted)
        for path in found:
            print(f"{os.path.relpath(path, REPO)} is stale: run `{COMMAND}` and commit it", file=sys.stderr)
        return 1 if found else 0
    for path in set(glob.glob(os.path.join(FOLDER, "*.json"))) - set(wanted):
        os.remove(path)  # a blueprint that is gone
    write_files(wanted)
    print(f"{FOLDER}: {len(wanted)} blueprints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
