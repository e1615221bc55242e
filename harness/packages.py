"""Import a folder as a package under a private module name: the pack (``hspace_pack``, as ComfyUI would load it)
and, inside the test server, the harness (``hspace_harness``).  Standalone (no imports of this package), so that
code which ComfyUI loads by path can run it with ``runpy.run_path``."""
import importlib.util
import os
import sys


def import_folder(name: str, folder: str):
    """The package ``folder`` imported once as ``name`` (its submodules then import as ``name.sub``)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
