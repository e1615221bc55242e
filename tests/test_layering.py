"""The nodes' layering: node modules import the common layer and the core, never each other."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON_LAYER = {"common", "comfy_model", "pixel_model", "edit_batch"}  # shared inputs/checks/folders, the model wrappers


def _relative_imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    return {node.module.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


def _modules() -> dict[str, str]:
    return {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(ROOT, "nodes", "*.py"))
            if not p.endswith("__init__.py")}


def test_node_modules_import_only_the_common_layer():
    for name, path in _modules().items():
        allowed = COMMON_LAYER - {name}
        assert _relative_imports(path) <= allowed, f"nodes/{name}.py imports {_relative_imports(path) - allowed}"


def test_every_module_is_a_node_module_or_common_layer():
    for name, path in _modules().items():
        source = open(path).read()
        defines_nodes = "io.ComfyNode" in source
        assert defines_nodes != (name in COMMON_LAYER), name
