"""Run a guide's code blocks as written: each block is written to a file and run as a script with ``runpy``, in
one namespace (a block sees what the ones before it defined), so a traceback names the block's file and line."""
import os
import runpy


def run_blocks(blocks: list[str], where, name: str) -> dict:
    namespace: dict = {}
    for i, block in enumerate(blocks):
        path = os.path.join(str(where), f"{name}_block{i}.py")
        with open(path, "w") as f:
            f.write(block)
        namespace = runpy.run_path(path, init_globals=namespace)
    return namespace
