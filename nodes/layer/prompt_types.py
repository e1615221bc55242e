"""Widget types checked in the prompt itself, before ComfyUI converts them.

ComfyUI's validation converts a widget value with ``bool()`` / ``int()`` / ``float()`` in place, so by the time a
node runs, ``"false"`` has become True and 2.7 has become 2: no node can refuse them any more.  An on-prompt
handler (it runs before validation) replaces such a value of a pack node with a ``RefusedValue``: a string holding
the value as sent, whose conversions raise the layer's message, so ComfyUI refuses the prompt at validation with
"Failed to convert an input value", the widget's name and what to send instead.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from .checks import type_problem
from .node import named

log = logging.getLogger("hspace")
GATED = (io.Boolean.Input, io.Int.Input, io.Float.Input)  # the widgets ComfyUI converts by bool / int / float


class RefusedValue(str):
    """A widget value of the wrong type: reads as the value sent, converts to nothing (raises ``message``).

    It stays in the prompt ComfyUI queues (a prompt with another, good output still runs that output), and ComfyUI
    deep-copies and may pickle what it queues: ``__reduce__`` rebuilds it from what made it, so a copy refuses alike.
    """

    def __new__(cls, sent, message: str):
        value = super().__new__(cls, repr(sent) if isinstance(sent, str) else str(sent))
        value.sent, value.message = sent, message
        return value

    def __reduce__(self):
        return RefusedValue, (self.sent, self.message)

    def _refuse(self, *args):
        raise ValueError(self.message)

    __bool__ = __int__ = __float__ = __index__ = _refuse


def gate(nodes) -> callable:
    """The on-prompt handler for the pack's node classes ``nodes``."""
    schemas = {}

    def schema_of(class_type):
        if class_type not in schemas:
            schemas[class_type] = next((n.define_schema() for n in nodes if n.define_schema().node_id == class_type),
                                       None)
        return schemas[class_type]

    def handler(json_data):
        prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
        for node in (prompt.values() if isinstance(prompt, dict) else ()):
            schema = schema_of(node.get("class_type")) if isinstance(node, dict) else None
            inputs = node.get("inputs") if schema is not None else None
            if not isinstance(inputs, dict):
                continue
            for spec in schema.inputs:
                value = inputs.get(spec.id)
                if isinstance(spec, GATED) and value is not None and not isinstance(value, (list, dict)):
                    problem = type_problem(spec, value)
                    if problem is not None:
                        inputs[spec.id] = RefusedValue(value, named(schema, problem))
        return json_data

    return handler


def install(nodes) -> None:
    """Register ``gate(nodes)`` with the running server (nothing to do without one, e.g. in unit tests)."""
    import sys

    server = sys.modules.get("server")  # ComfyUI's own server module, loaded before custom nodes when one runs
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is not None:
        instance.add_on_prompt_handler(gate(nodes))
