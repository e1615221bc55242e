"""docs/nodes.md is the node schemas as ComfyUI registers them (python -m harness.node_docs regenerates it)."""
import difflib

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
