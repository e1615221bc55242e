"""docs/nodes.md is the node schemas as ComfyUI registers them (python -m harness.node_docs regenerates it)."""
import difflib
import os

from harness import node_docs


def test_node_reference_matches_the_schemas():
    expected = node_docs.render(node_docs.node_infos())
    current = open(node_docs.PAGE).read()
    diff = "".join(list(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                             "docs/nodes.md", "the schemas"))[:40])
    assert current == expected, f"docs/nodes.md is stale: run `{node_docs.COMMAND}` and commit it.\n{diff}"


def test_a_node_renders_its_inputs_outputs_and_flags():
    info = {
        "name": "Demo", "display_name": "Demo Node", "category": "h-space/demo", "description": "Does a | b.",
        "input": {
            "required": {"strength": ["FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                                "tooltip": "How far."}],
                         "mode": ["COMBO", {"options": ["a", "b"], "default": "b", "advanced": True}]},
            "optional": {"file": ["COMBO", {"options": []}], "seed": ["INT", {"default": 0, "min": 0,
                                                                              "max": 2**64 - 1}],
                         "model": ["MODEL"]},
        },
        "output": ["LATENT"], "output_name": ["edited"], "output_tooltips": ["The\nresult."],
    }
    page = node_docs.render([info])
    assert "- **h-space/demo**: [Demo Node](#demo-node)" in page
    assert "`Demo` · category `h-space/demo`\n\nDoes a \\| b." in page
    assert "| `strength` | FLOAT | `1` | -2 … 2 (step 0.05) |  | How far. |" in page
    assert "| `mode` | COMBO | `b` | `a`, `b` | advanced |  |" in page
    assert "| `file` | COMBO |  | files in its models folder | optional |  |" in page
    assert "| `seed` | INT | `0` | 0 … 2⁶⁴ − 1 | optional |  |" in page
    assert "| `model` | MODEL |  |  | optional |  |" in page
    assert "| `edited` | LATENT | The result. |" in page


def test_every_registered_node_has_a_current_help_page():
    """web/docs/<node id>.md (the editor's help page, made by the same generator from the same schemas): one per
    registered node, none left over, each as the generator writes it."""
    infos = node_docs.node_infos()
    pages = node_docs.help_pages(infos)
    assert sorted(os.path.basename(p)[:-3] for p in pages) == sorted(info["name"] for info in infos)
    assert set(node_docs.HELP) == {info["name"] for info in infos}, "harness/node_help.py: one entry per node"
    stale = [os.path.relpath(p, node_docs.REPO) for p in node_docs.stale_help_pages(pages)]
    assert not stale, f"stale, missing or left-over help pages {stale}: run `{node_docs.COMMAND}` and commit them."


def test_a_help_page_has_its_sections_and_the_nodes_tables():
    info = {"name": "HSpaceHShiftPatch", "display_name": "H-Space Shift", "category": "h-space/samplers",
            "input": {"required": {"strength": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}]}},
            "output": ["MODEL"], "output_name": ["model"], "output_tooltips": ["The patched MODEL."]}
    page = node_docs.render_help(info, ("FreeU", "model patch"))
    assert page.startswith("# H-Space Shift\n\n" + node_docs.HELP["HSpaceHShiftPatch"]["does"].split(".")[0])
    assert "· search: FreeU, model patch" in page
    assert "| `strength` | FLOAT | `1` | -100 … 100 |  |  |" in page
    assert "| `model` | MODEL | The patched MODEL. |" in page
    sections = [line for line in page.splitlines() if line.startswith("## ")]
    assert sections == ["## Inputs", "## Outputs", "## Example", "## Paper", "## When it refuses"]
    try:
        node_docs.render_help({**info, "name": "NoSuchNode"})
    except KeyError as error:
        assert "harness/node_help.py" in str(error)
    else:
        raise AssertionError("a node without help text must fail the generator")
