// Expert widgets (inputs marked `advanced` in the pack's schemas: cfg, edit_branches, stride, mode, per_channel, ...)
// start hidden. ComfyUI's frontend 1.32 already hides a widget whose `advanced` is set and offers "Show Advanced" /
// "Hide Advanced" in the node's right-click menu (saved per node as `showAdvanced`), but it copies the input
// definition's flag only into widget.options; this lifts it onto the widget. Widgets that already carry the flag
// (newer frontends, with the schema's own `advanced=True`) are left alone (docs/compatibility.md).
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "hspace.advancedWidgets",
  nodeCreated(node) {
    const marked = (node.widgets || []).filter((w) => w.options?.advanced && !w.advanced);
    if (!marked.length) return;
    for (const w of marked) w.advanced = true;
    node.setSize([node.size[0], node.computeSize()[1]]);
  },
});
