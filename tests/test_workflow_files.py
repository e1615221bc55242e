"""Every shipped UI workflow is readable and in sync with its API graph (no server needed): it starts with a note,
every other node sits inside a named group, no two nodes overlap, and its nodes, links and widget values are those of
workflows/api/<name>.json. The e2e editor test also converts each file with the server's object_info and compares."""
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW_DIR = os.path.join(ROOT, "workflows")
NAMES = sorted(f[:-5] for f in os.listdir(os.path.join(WORKFLOW_DIR, "api")) if f.endswith(".json"))
NOTES = {"Note", "MarkdownNote"}
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar sits above its pos


def _ui(name):
    return json.load(open(os.path.join(WORKFLOW_DIR, name + ".json")))


def _api(name):
    return json.load(open(os.path.join(WORKFLOW_DIR, "api", name + ".json")))


def _rect(node):
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE, x + w, y + h


def test_every_api_graph_has_a_ui_file_and_a_note_text():
    assert NAMES
    ui_names = sorted(f[:-5] for f in os.listdir(WORKFLOW_DIR) if f.endswith(".json"))
    assert ui_names == NAMES
    for name in NAMES:
        assert os.path.exists(os.path.join(WORKFLOW_DIR, "layout", "notes", name + ".md")), name


@pytest.mark.parametrize("name", NAMES)
def test_the_workflow_starts_with_its_note(name):
    notes = [n for n in _ui(name)["nodes"] if n["type"] in NOTES]
    assert len(notes) == 1, name
    text = open(os.path.join(WORKFLOW_DIR, "layout", "notes", name + ".md")).read().strip()
    assert notes[0]["widgets_values"][0] == text
    others = [n for n in _ui(name)["nodes"] if n["type"] not in NOTES]
    assert notes[0]["pos"][0] < min(n["pos"][0] for n in others)  # left of everything: read first


@pytest.mark.parametrize("name", NAMES)
def test_every_node_sits_inside_a_named_group(name):
    ui = _ui(name)
    groups = ui["groups"]
    assert groups and all(g["title"] for g in groups)
    for node in ui["nodes"]:
        if node["type"] in NOTES:
            continue
        x0, y0, x1, y1 = _rect(node)
        inside = [g["title"] for g in groups
                  if g["bounding"][0] <= x0 and x1 <= g["bounding"][0] + g["bounding"][2]
                  and g["bounding"][1] <= y0 and y1 <= g["bounding"][1] + g["bounding"][3]]
        assert len(inside) == 1, (name, node["id"], node["type"], inside)


@pytest.mark.parametrize("name", NAMES)
def test_no_two_nodes_or_groups_overlap(name):
    ui = _ui(name)
    rects = [(f"node {n['id']}", _rect(n)) for n in ui["nodes"]]
    rects += [(f"group {g['title']}", (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                                       g["bounding"][1] + g["bounding"][3])) for g in ui["groups"]]
    notes = {f"node {n['id']}" for n in ui["nodes"] if n["type"] in NOTES}
    for i, (a, ra) in enumerate(rects):
        for b, rb in rects[i + 1:]:
            if a.startswith("group") != b.startswith("group") and not (a in notes or b in notes):
                continue  # a node inside a group is the point
            assert not (ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]), (name, a, b)


@pytest.mark.parametrize("name", NAMES)
def test_groups_run_left_to_right_along_the_links(name):
    ui = _ui(name)
    column = {}
    for node in ui["nodes"]:
        x0, y0, x1, y1 = _rect(node)
        for i, g in enumerate(sorted(ui["groups"], key=lambda g: g["bounding"][0])):
            if g["bounding"][0] <= x0 and x1 <= g["bounding"][0] + g["bounding"][2]:
                column[node["id"]] = i
    for link in ui["links"]:  # [id, origin, slot, target, slot, type]: no wire runs back to an earlier group
        assert column[link[1]] <= column[link[3]], (name, link)


@pytest.mark.parametrize("name", NAMES)
def test_the_ui_file_has_the_api_graphs_nodes_links_and_values(name):
    ui, api = _ui(name), _api(name)
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in NOTES}
    assert {k: n["type"] for k, n in nodes.items()} == {k: v["class_type"] for k, v in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for key, spec in api.items():
        node = nodes[key]
        wired = {slot["name"]: [str(links[slot["link"]][1]), links[slot["link"]][2]]
                 for slot in node.get("inputs", []) if slot.get("link") is not None}
        assert wired == {k: v for k, v in spec["inputs"].items() if isinstance(v, list)}, (name, key)
        values = list(node.get("widgets_values") or [])
        for input_name, value in spec["inputs"].items():  # every literal is a widget value (order: object_info's)
            if isinstance(value, list):
                continue
            assert value in values, (name, key, input_name, value, values)
            values.remove(value)


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_thumbnail_of_what_it_makes(name):
    from PIL import Image

    from harness.thumbnails import SIZE, is_sd, sd_diagram

    shipped = Image.open(os.path.join(WORKFLOW_DIR, name + ".jpg"))
    assert shipped.size == SIZE, name
    if is_sd(name):  # a diagram drawn from the API graph: regenerating it gives the same picture
        import numpy as np

        drawn = np.asarray(sd_diagram(name, _api(name)), dtype=float)
        assert np.abs(drawn - np.asarray(shipped.convert("RGB"), dtype=float)).mean() < 2, name
