"""Turn a UI-format workflow (what the graph editor saves) into the API prompt ``POST /prompt`` takes,
the way the editor's graphToPrompt does: widget values in widget order, links from the links table."""
from __future__ import annotations

MUTED, BYPASSED = 2, 4
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def _spec(object_info: dict, node_type: str, name: str):
    inputs = object_info[node_type]["input"]
    for section in ("required", "optional"):
        if name in inputs.get(section, {}):
            return inputs[section][name]
    return None


def _has_control(spec) -> bool:
    if spec is None:
        return False
    options = spec[1] if len(spec) > 1 else {}
    return bool(options.get("control_after_generate"))


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _new_widget_defaults(object_info: dict, node_type: str, listed: set) -> dict:
    """{name: default} of the node's widgets the file does not list (it predates them): the editor adds them."""
    found = {}
    for section in ("required", "optional"):
        for name, spec in object_info[node_type]["input"].get(section, {}).items():
            options = spec[1] if len(spec) > 1 else {}
            is_widget = isinstance(spec[0], list) or spec[0] in WIDGET_TYPES
            if is_widget and name not in listed and "default" in options and not options.get("forceInput"):
                found[name] = options["default"]
    return found


def ui_to_api(ui: dict, object_info: dict, new_widget_defaults: bool = False) -> dict:
    """``new_widget_defaults``: widgets newer than the file get their defaults, as the editor's conversion does."""
    links = {link[0]: link for link in ui.get("links", [])}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        if node["type"] not in object_info:
            raise KeyError(f"Node type {node['type']} is not registered on this server (missing custom node?).")
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for slot in node.get("inputs", []):
            if "widget" in slot:
                spec = _spec(object_info, node["type"], slot["name"])
                value = values.pop(0) if values else None
                if spec is not None:
                    inputs[slot["name"]] = value
                    if _has_control(spec) and values:
                        values.pop(0)
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        if new_widget_defaults:
            listed = {slot["name"] for slot in node.get("inputs", [])}
            inputs.update(_new_widget_defaults(object_info, node["type"], listed))
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
