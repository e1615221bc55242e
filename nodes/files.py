"""Save / Load nodes for the pack's savable types (directions, h trajectories), made by one factory."""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..hspace_core import Direction, HTrajectory
from .layer import CATEGORY, DirectionType, HSpaceNode, Trajectory, list_files, resolve, save_path, stored_file_state


def save_and_load_nodes(kind: str, label: str, io_type, cls, folder: str, category: str):
    """Two node classes: 'H-Space Save <label>' (output node) and 'H-Space Load <label>' over models/<folder>."""
    noun = label.lower()

    class Save(HSpaceNode):
        @classmethod
        def define_schema(c):
            return io.Schema(
                node_id=f"HSpaceSave{kind}", display_name=f"H-Space Save {label}", category=category,
                description=f"Save the {noun} as safetensors (with its model fingerprint, timesteps and the window / grid "
                            f"it was made with) under models/{folder}.",
                inputs=[io_type.Input(noun, tooltip=f"The {noun} to save."),
                        io.String.Input("filename_prefix", default=noun, tooltip="File name prefix (numbered, never overwritten).")],
                outputs=[], is_output_node=True,
            )

        @classmethod
        def execute(c, filename_prefix, **value) -> io.NodeOutput:
            path = save_path(folder, filename_prefix)
            value[noun].save(path)
            made_with = getattr(value[noun], "made_with", "")  # its window / grid record, saved in the file too
            return io.NodeOutput(ui={"text": [os.path.basename(path), *([f"made with {made_with}"] if made_with else [])]})

    class Load(HSpaceNode):
        @classmethod
        def define_schema(c):
            return io.Schema(
                node_id=f"HSpaceLoad{kind}", display_name=f"H-Space Load {label}", category=category,
                description=f"Load a {noun} saved with 'H-Space Save {label}' from models/{folder}.",
                inputs=[io.Combo.Input(f"{noun}_file", options=list_files(folder), tooltip=f"A .safetensors {noun} file.")],
                outputs=[io_type.Output(noun, tooltip=f"The loaded {noun}.")],
            )

        @classmethod
        def fingerprint_inputs(c, **files):
            """Re-run when the file changes on disk."""
            return stored_file_state(folder, files[f"{noun}_file"])

        @classmethod
        def execute(c, **files) -> io.NodeOutput:
            return io.NodeOutput(cls.load(resolve(folder, files[f"{noun}_file"])))

    Save.__name__, Load.__name__ = f"Save{kind}", f"Load{kind}"
    return Save, Load


SaveDirection, LoadDirection = save_and_load_nodes("Direction", "Direction", DirectionType, Direction,
                                                   "hspace_directions", f"{CATEGORY}/direction")
SaveTrajectory, LoadTrajectory = save_and_load_nodes("Trajectory", "Trajectory", Trajectory, HTrajectory,
                                                     "hspace_trajectories", f"{CATEGORY}/io")
