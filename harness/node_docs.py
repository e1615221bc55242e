"""docs/nodes.md, the node reference, generated from the node schemas ComfyUI registers.

    python -m harness.node_docs            # rewrite docs/nodes.md
    python -m harness.node_docs --check    # exit 1 if docs/nodes.md is stale

Imports the pack in this process inside ComfyUI (``harness.inprocess``), asks the pack's extension for its node list
as ComfyUI does, and renders each node's ``/object_info`` entry: display name, id, category, description, inputs
(type, default, range or options, advanced/optional, tooltip) and outputs. File pickers are listed with the model
folders empty, so the page does not depend on what this machine has downloaded.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import sys
import tempfile

from .server import REPO

PAGE = os.path.join(REPO, "docs", "nodes.md")
COMMAND = "python -m harness.node_docs"


def node_classes() -> list[type]:
    """The pack's nodes, in the order its ComfyExtension lists them."""
    from .inprocess import load_pack

    load_pack()
    pack = importlib.import_module("hspace_pack")
    extension = asyncio.run(pack.comfy_entrypoint())
    return list(asyncio.run(extension.get_node_list()))


@contextlib.contextmanager
def empty_model_folders():
    """Every ComfyUI model folder points at an empty directory while the schemas are built (file lists: none)."""
    import folder_paths

    saved = dict(folder_paths.folder_names_and_paths), folder_paths.filename_list_cache
    with tempfile.TemporaryDirectory(prefix="hspace-node-docs-") as empty:
        folder_paths.folder_names_and_paths.update(
            {name: ([empty], extensions) for name, (_, extensions) in saved[0].items()})
        folder_paths.filename_list_cache = {}
        try:
            yield
        finally:
            folder_paths.folder_names_and_paths.clear()
            folder_paths.folder_names_and_paths.update(saved[0])
            folder_paths.filename_list_cache = saved[1]


def _output_names(schema) -> list[str]:
    """Each output's display name, else its id (what ComfyUI ≥ 0.4 shows; 0.3.x shows the type), else its type."""
    return [o.display_name or (o.id if o.id != f"_{i}_{o.io_type}_" else o.io_type)
            for i, o in enumerate(schema.outputs or [])]


def node_infos() -> list[dict]:
    """Each node's /object_info entry, with output names that do not depend on the ComfyUI version."""
    infos, classes = [], node_classes()
    with empty_model_folders():
        for cls in classes:
            info = cls.GET_NODE_INFO_V1()
            info["output_name"] = _output_names(cls.GET_SCHEMA())
            infos.append(info)
    return infos


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _number(value) -> str:
    if value == 2**64 - 1:  # ComfyUI's largest seed
        return "2⁶⁴ − 1"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _values(kind, options: dict) -> str:
    """The range or the options of one input, as a table cell."""
    choices = kind if isinstance(kind, list) else options.get("options")
    if choices is not None:
        return ", ".join(f"`{c}`" for c in choices) if choices else "files in its models folder"
    if "min" in options or "max" in options:
        text = f"{_number(options.get('min', '−∞'))} … {_number(options.get('max', '∞'))}"
        return text + (f" (step {_number(options['step'])})" if "step" in options else "")
    return ""


def _default(options: dict) -> str:
    if "default" not in options:
        return ""
    value = options["default"]
    return f"`{_number(value)}`" if value != "" else '`""`'


def _input_rows(info: dict) -> list[str]:
    rows = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            flags = [f for f, on in (("optional", section == "optional"), ("advanced", options.get("advanced")))
                     if on]
            type_name = "COMBO" if isinstance(kind, list) else kind
            rows.append(f"| `{name}` | {type_name} | {_default(options)} | {_cell(_values(kind, options))} | "
                        f"{', '.join(flags)} | {_cell(options.get('tooltip', ''))} |")
    return rows


def render_node(info: dict) -> str:
    lines = [f"### {info['display_name']}", "", f"`{info['name']}` · category `{info['category']}`"
             + (" · output node" if info.get("output_node") else ""), ""]
    if info.get("description"):
        lines += [_cell(info["description"]), ""]
    inputs = _input_rows(info)
    if inputs:
        lines += ["| input | type | default | range / options | | tooltip |", "|---|---|---|---|---|---|", *inputs, ""]
    if info["output"]:
        lines += ["| output | type | tooltip |", "|---|---|---|"]
        tooltips = info.get("output_tooltips") or [None] * len(info["output"])
        for name, kind, tip in zip(info["output_name"], info["output"], tooltips):
            lines.append(f"| `{name}` | {kind} | {_cell(tip or '')} |")
        lines.append("")
    return "\n".join(lines)


def render(infos: list[dict]) -> str:
    """The whole page: an index by category, then one section per category, nodes in registration order."""
    categories: dict[str, list[dict]] = {}
    for info in infos:
        categories.setdefault(info["category"], []).append(info)
    head = [
        "# Node reference",
        "",
        f"Generated from the node schemas by `{COMMAND}`; do not edit by hand (`tests/test_node_docs.py` fails when",
        "this page is stale). *Advanced* inputs start hidden in the editor: right-click the node → **Show Advanced**.",
        "What each sample workflow does with these nodes: [guide.md](guide.md).",
        "",
    ]
    for category, members in categories.items():
        head.append(f"- **{category}**: " + ", ".join(
            f"[{m['display_name']}](#{_anchor(m['display_name'])})" for m in members))
    body = [f"## {category}\n\n" + "\n".join(render_node(m) for m in members) for category, members in categories.items()]
    return "\n".join(head) + "\n\n" + "\n".join(body).rstrip() + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if docs/nodes.md differs from the schemas")
    p.add_argument("--out", default=PAGE)
    args = p.parse_args(argv)
    text = render(node_infos())
    if args.check:
        current = open(args.out).read() if os.path.exists(args.out) else ""
        if current != text:
            print(f"{args.out} is stale: run `{COMMAND}` and commit the result", file=sys.stderr)
            return 1
        return 0
    with open(args.out, "w") as f:
        f.write(text)
    print(f"{args.out}: {text.count(chr(10) + '### ')} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
