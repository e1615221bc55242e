"""docs/nodes.md, the node reference, and the editor's help pages web/docs/<node id>.md, generated from the node
schemas ComfyUI registers.

    python -m harness.node_docs            # rewrite docs/nodes.md and web/docs/*.md
    python -m harness.node_docs --check    # exit 1 if any of them is stale, missing or left over

Imports the pack in this process inside ComfyUI (``harness.inprocess``), asks the pack's extension for its node list
as ComfyUI does, and renders each node's ``/object_info`` entry: display name, id, category, description, inputs
(type, default, range or options, advanced/optional, tooltip) and outputs. File pickers are listed with the model
folders empty, so the page does not depend on what this machine has downloaded.  A help page adds to the same input
and output tables the node's prose (``harness/node_help.py``) and search aliases (``nodes/layer/search.py``); the
editor fetches it from ``/extensions/<pack>/docs/<node id>.md`` (ComfyUI frontend, nodeHelpService).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import importlib
import os
import sys
import tempfile

from .node_help import HELP
from .server import REPO

PAGE = os.path.join(REPO, "docs", "nodes.md")
HELP_DIR = os.path.join(REPO, "web", "docs")
COMMAND = "python -m harness.node_docs"
LISTED_CHOICES = 12  # a longer combo lists its first ones and its count


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
    if choices is not None and len(choices) > LISTED_CHOICES:  # e.g. the site's every transformer block
        return ", ".join(f"`{c}`" for c in choices[:LISTED_CHOICES]) + f", … ({len(choices)} options, `{choices[-1]}` last)"
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


def _aliases() -> dict:
    """Every node's search aliases, from the pack (the same on every ComfyUI, whether its schema takes them)."""
    from .inprocess import load_pack

    load_pack()
    return importlib.import_module("hspace_pack.nodes.layer.search").SEARCH_ALIASES


def render_help(info: dict, aliases=()) -> str:
    """One node's help page: what it does, its inputs and outputs (docs/nodes.md's tables), an example, its paper
    and equation, and what to do when it refuses something."""
    node_id = info["name"]
    if node_id not in HELP:
        raise KeyError(f"{node_id} has no help text: add it to harness/node_help.py")
    text = HELP[node_id]
    lines = [f"# {info['display_name']}", "", " ".join(text["does"].split()), "",
             f"`{node_id}` · category `{info['category']}`"
             + (f" · search: {', '.join(aliases)}" if aliases else ""), ""]
    inputs = _input_rows(info)
    if inputs:
        lines += ["## Inputs", "", "| input | type | default | range / options | | tooltip |",
                  "|---|---|---|---|---|---|", *inputs, ""]
    if info["output"]:
        lines += ["## Outputs", "", "| output | type | tooltip |", "|---|---|---|"]
        tooltips = info.get("output_tooltips") or [None] * len(info["output"])
        for name, kind, tip in zip(info["output_name"], info["output"], tooltips):
            lines.append(f"| `{name}` | {kind} | {_cell(tip or '')} |")
        lines.append("")
    lines += ["## Example", "", " ".join(text["example"].split()), "",
              "## Paper", "", " ".join(text["paper"].split()), "",
              "## When it refuses", "",
              "Every widget is checked before the node runs (type, range, options), then the MODEL, x_T, directions "
              "and trajectories it is given; a refusal names the node and the widget and says what to change. "
              + " ".join(text["refusals"].split()), "",
              f"*Generated by `{COMMAND}` from the node's schema; the whole reference is docs/nodes.md.*", ""]
    return "\n".join(lines)


def help_pages(infos: list[dict]) -> dict[str, str]:
    """{path: text} of every node's help page."""
    aliases = _aliases()
    return {os.path.join(HELP_DIR, f"{info['name']}.md"): render_help(info, aliases.get(info["name"], ()))
            for info in infos}


def stale_files(files: dict[str, str]) -> list[str]:
    """The paths of ``files`` ({path: text}) that are missing or hold another text."""
    return [path for path, text in files.items()
            if not os.path.exists(path) or open(path, encoding="utf-8").read() != text]


def write_files(files: dict[str, str]) -> None:
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def stale_help_pages(pages: dict[str, str]) -> list[str]:
    """The help pages that differ from ``pages``, are missing, or belong to no registered node."""
    return stale_files(pages) + sorted(set(glob.glob(os.path.join(HELP_DIR, "*.md"))) - set(pages))


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if docs/nodes.md differs from the schemas")
    p.add_argument("--out", default=PAGE)
    args = p.parse_args(argv)
    infos = node_infos()
    text, pages = render(infos), help_pages(infos)
    if args.check:
        current = open(args.out).read() if os.path.exists(args.out) else ""
        stale = ([args.out] if current != text else []) + stale_help_pages(pages)
        for path in stale:
            print(f"{os.path.relpath(path, REPO)} is stale: run `{COMMAND}` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for path in set(glob.glob(os.path.join(HELP_DIR, "*.md"))) - set(pages):
        os.remove(path)  # a node that is no longer registered
    write_files({args.out: text, **pages})
    print(f"{args.out}: {text.count(chr(10) + '### ')} nodes; {HELP_DIR}: {len(pages)} help pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
