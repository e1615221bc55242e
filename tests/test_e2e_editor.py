"""End to end in the real graph editor: headless Chromium loads each shipped workflow file, finds no missing node
types, and queues it through the UI (the Run button's code path) until it completes; the shipped workflows are
ComfyUI's templates for this pack (GET /workflow_templates) and one opens from the editor's template browser."""
import json
import os
import shutil
import subprocess

import pytest

from e2e_helpers import ROOT, WORKFLOWS, fresh, load_prompt, overrides_for, runnable_copy

pytestmark = pytest.mark.e2e
EDITOR = os.path.join(ROOT, "harness", "browser", "editor.js")


def test_every_workflow_loads_and_runs_in_the_editor(comfy, tmp_path):
    assert shutil.which("node"), "Node.js is needed for the editor test (scripts/setup_tests.sh installs the rest)"
    assert os.path.isdir(os.path.join(ROOT, "harness", "browser", "node_modules", "playwright-core")), \
        "run scripts/setup_tests.sh: it installs playwright-core into harness/browser"
    chromium = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    assert os.path.exists(chromium), f"no Chromium at {chromium}: scripts/setup_tests.sh installs Debian's chromium"
    fresh(comfy)  # run for real, not from the HTTP tests' cache
    # the SDXL workflow runs on the tiny SDXL stand-in loader (e2e_helpers); its shipped node types must all exist
    for path in WORKFLOWS:
        types = {n["type"] for n in json.load(open(path))["nodes"]} - {"Note", "MarkdownNote"}
        assert types <= set(comfy.object_info), (os.path.basename(path), types - set(comfy.object_info))
    manifest = [{"file": runnable_copy(path, str(tmp_path)), "overrides": overrides_for(path)} for path in WORKFLOWS]
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    run = subprocess.run(["node", EDITOR, "check", str(comfy.port), str(manifest_path)], capture_output=True,
                         text=True, timeout=1800)
    results = {r["workflow"]: r for r in map(json.loads, filter(None, run.stdout.splitlines()))}
    assert set(results) == {os.path.basename(p) for p in WORKFLOWS}, run.stdout + run.stderr
    for item in manifest:
        name = os.path.basename(item["file"])
        r = results[name]
        assert r["missing"] == [] and r["missingDialog"] == 0 and r["errors"] == [], r
        assert r["status"] == "success", (name, r["messages"])
        # the editor's own UI → API conversion agrees with the one the HTTP tests use (widgets newer than the
        # file, e.g. DDIM Inversion's h_storage, at their defaults)
        ours = load_prompt(item["file"], comfy.object_info, item["overrides"], new_widget_defaults=True)
        theirs = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in r["prompt"].items()}
        assert theirs == ours, name
        # expert widgets (inputs marked advanced) are hidden until the node menu's "Show Advanced", and only they
        types = {str(n["id"]): n["type"] for n in json.load(open(item["file"]))["nodes"]}
        for node_id, hidden in r["hidden"].items():
            assert sorted(hidden) == sorted(_advanced_inputs(comfy.object_info, types[node_id])), (name, types[node_id])
        assert r["toggled"] and all(not names for names in r["shownAfterToggle"].values()), (name, r["shownAfterToggle"])
        # the pack's nodes grow to show them; a core node keeps the size the file gives it (ComfyUI 0.33 marks some
        # of its own inputs advanced, e.g. CLIPTextEncodeSDXL's sizes, and the file has room for them)
        ours_toggled = [i for i in r["toggled"] if _is_pack_node(comfy.object_info, types[str(i)])]
        assert ours_toggled and set(ours_toggled) <= set(r["grown"]), (name, r["toggled"], r["grown"])
    assert run.returncode == 0, run.stderr


def _is_pack_node(object_info, node_type):
    from harness.server import PACK_NAME

    return object_info.get(node_type, {}).get("python_module") == f"custom_nodes.{PACK_NAME}"


def _advanced_inputs(object_info, node_type):
    if node_type not in object_info:  # MarkdownNote: frontend-only
        return []
    spec = object_info[node_type]["input"]
    return [name for section in ("required", "optional") for name, value in spec.get(section, {}).items()
            if len(value) > 1 and value[1].get("advanced")]


def test_every_ui_file_converts_to_its_api_graph(comfy):
    """workflows/*.json are generated from workflows/api/*.json by `editor.js export`: notes and groups add nothing
    to the prompt, and every value and link survives."""
    from harness.ui_to_api import ui_to_api

    for path in WORKFLOWS:
        api = json.load(open(os.path.join(ROOT, "workflows", "api", os.path.basename(path))))
        assert ui_to_api(json.load(open(path)), comfy.object_info) == api, os.path.basename(path)


def _stems(paths):
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in paths)


def test_the_server_lists_every_shipped_workflow_as_a_template(comfy):
    from harness.server import PACK_NAME

    assert sorted(comfy.get("/workflow_templates")[PACK_NAME]) == _stems(WORKFLOWS)
    for path in WORKFLOWS:  # the URLs the template browser fetches: the graph and its <name>.jpg thumbnail
        stem = os.path.splitext(os.path.basename(path))[0]
        assert comfy.get(f"/api/workflow_templates/{PACK_NAME}/{stem}.json") == json.load(open(path))
        assert comfy.get(f"/api/workflow_templates/{PACK_NAME}/{stem}.jpg")[:3] == b"\xff\xd8\xff"


def test_a_template_opens_from_the_template_browser(comfy):
    from harness.server import PACK_NAME

    path = os.path.join(ROOT, "workflows", "interpolation.json")
    run = subprocess.run(["node", EDITOR, "template", str(comfy.port), PACK_NAME, "interpolation"], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert sorted(c["name"] for c in result["cards"]) == _stems(WORKFLOWS)
    assert all(c["thumbnail"] > 0 for c in result["cards"]), result["cards"]  # every thumbnail decoded and shown
    assert result["nodes"] == [n["type"] for n in json.load(open(path))["nodes"]]


def test_a_help_page_and_a_blueprint_open_in_the_editor(comfy):
    """ComfyUI 0.33's editor (frontend 1.49): the node library shows H-Space Asyrp Edit's help page
    (web/docs/HSpaceAsyrpEdit.md), and the node search finds and adds the H-Space Style Mixing blueprint, a subgraph
    node whose widgets are the blueprint's knobs and whose prompt is its inner nodes."""
    import urllib.error

    try:
        comfy.get("/global_subgraphs")
    except urllib.error.HTTPError:
        pytest.skip("this ComfyUI serves no blueprints (/global_subgraphs)")
    if "search_aliases" not in comfy.object_info["HSpaceHShiftPatch"]:
        pytest.skip("written for 0.33's editor (frontend 1.49); this ComfyUI's schema has no search aliases (0.3.75)")
    assert "FreeU" in comfy.object_info["HSpaceHShiftPatch"]["search_aliases"]
    run = subprocess.run(["node", EDITOR, "help", str(comfy.port), "HSpaceAsyrpEdit", "H-Space Style Mixing"],
                         capture_output=True, text=True, timeout=600)
    result = json.loads(run.stdout.splitlines()[-1]) if run.stdout.strip() else {}
    assert run.returncode == 0, (result, run.stderr[-2000:])
    assert any(f["url"].endswith("/docs/HSpaceAsyrpEdit.md") and f["status"] == 200 for f in result["fetched"])
    assert "refuses" in result["helpText"] and "allow_other_model" in result["helpText"], result["helpText"][:2000]
    added = result["added"]
    assert added["title"] == "H-Space Style Mixing" and added["widgets"][:4] == ["gamma", "t_edit", "omega", "steps"]
    assert sorted(added["inner"]) == sorted(["HSpaceDDIMInversion", "HSpaceDDIMInversion", "HSpaceStyleCalibrate",
                                             "HSpaceSlerpContentInject", "VAEDecode"])
    # the editor expands the subgraph node as harness.blueprints.expand does (what tests/test_e2e_blueprints.py runs)
    from harness import blueprints

    bp = json.load(open(os.path.join(ROOT, "subgraphs", "H-Space Style Mixing.json")))
    node_id = next(iter(added["prompt"])).split(":")[0]
    ours = blueprints.expand({node_id: {"class_type": blueprints.subgraph_id(bp), "inputs": blueprints.knobs_of(bp)}},
                             [bp], comfy.object_info)
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in added["prompt"].items()} == ours
