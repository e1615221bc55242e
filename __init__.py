"""ComfyUI entry point of the H-Space node pack: nodes in ``nodes/``, the framework-free math in ``hspace_core/``."""
try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (e.g. by pytest collecting the repo root): nothing to register
    ComfyExtension = None

WEB_DIRECTORY = "./web"  # advanced_widgets.js: expert widgets start hidden (node menu: Show Advanced)

if ComfyExtension is not None:
    from .nodes import NODES

    class HSpaceExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODES)

    async def comfy_entrypoint():
        return HSpaceExtension()
