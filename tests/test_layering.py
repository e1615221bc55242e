"""The nodes' layering: node modules import the common layer and the core, never each other."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON_LAYER = {"layer", "comfy"}  # the node-execution layer (nodes/layer/); the ComfyUI adapter (nodes/comfy/)


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
        defines_nodes = "(HSpaceNode)" in source
        assert defines_nodes != (name in COMMON_LAYER), name


def test_the_comfy_adapter_imports_only_itself_and_the_core():
    for path in glob.glob(os.path.join(ROOT, "nodes", "comfy", "*.py")):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 or (node.level == 3 and (node.module or "").startswith("hspace_core")), \
                    f"nodes/comfy/{os.path.basename(path)} imports {'.' * node.level}{node.module}"
            if isinstance(node, ast.ClassDef):
                assert "ComfyNode" not in ast.unparse(node), f"node class {node.name} in nodes/comfy/"


def test_the_node_layer_imports_only_itself_the_adapter_and_the_core():
    for path in glob.glob(os.path.join(ROOT, "nodes", "layer", "*.py")):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                module = node.module or ""
                assert node.level == 1 or (node.level == 2 and module.startswith("comfy")) or \
                    (node.level == 3 and module.startswith("hspace_core")), \
                    f"nodes/layer/{os.path.basename(path)} imports {'.' * node.level}{module}"


def test_widget_factories_only_build_inputs():
    """nodes/layer/schema.py builds inputs; what their values mean (windows on the MODEL's noise levels, the boost,
    seeds) is read in resolution.py, which imports schema and not the other way round."""
    tree = ast.parse(open(os.path.join(ROOT, "nodes", "layer", "schema.py")).read())
    modules = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    resolving = ("resolution", "comfy", "hspace_core.noise_levels", "hspace_core.sampling")
    assert not [module for module in modules if module.startswith(resolving)], modules
