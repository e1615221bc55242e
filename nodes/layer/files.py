"""The pack's model folders via ComfyUI's folder_paths: models/hspace_directions, models/hspace_trajectories,
models/asyrp (official Asyrp .pth checkpoints) and models/open_clip (open_clip weights and model configs), and the
change fingerprints of the files nodes read."""
from __future__ import annotations

import os

import folder_paths

FOLDERS = {"hspace_directions": {".safetensors"}, "hspace_trajectories": {".safetensors"},
           "asyrp": {".pth", ".pt"}, "open_clip": {".safetensors", ".bin", ".pt", ".pth", ".json"}}


def register_folders() -> None:
    for name, extensions in FOLDERS.items():
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))


def list_files(kind: str) -> list[str]:
    register_folders()
    return folder_paths.get_filename_list(kind)


def resolve(kind: str, name: str) -> str:
    register_folders()
    path = folder_paths.get_full_path(kind, name)
    if path is None:
        raise ValueError(f"{name!r} is not in models/{kind}; save one there first or pick another file.")
    return path


def save_path(kind: str, prefix: str) -> str:
    """A new numbered file under the first models/<kind> folder (never overwrites)."""
    register_folders()
    folder = folder_paths.get_folder_paths(kind)[0]
    os.makedirs(folder, exist_ok=True)
    safe = "".join(c for c in prefix if c.isalnum() or c in "-_") or kind
    n = 1
    while os.path.exists(os.path.join(folder, f"{safe}_{n:05d}.safetensors")):
        n += 1
    return os.path.join(folder, f"{safe}_{n:05d}.safetensors")


def stored_file_state(kind: str, name: str):
    """``file_state`` of a file in models/<kind> (for the loaders' ``fingerprint_inputs``)."""
    register_folders()
    return file_state(folder_paths.get_full_path(kind, name))


def file_state(path: str | None):
    """A change fingerprint of a file or a folder's files (path, mtime, size), for ``fingerprint_inputs``: ComfyUI
    re-runs a loader when it changes.  None when the path does not exist (execute then says what is wrong)."""
    if not path or not os.path.exists(path):
        return None
    if os.path.isfile(path):
        stat = os.stat(path)
        return ((path, stat.st_mtime_ns, stat.st_size),)
    return tuple(entry for root, _, names in sorted(os.walk(path)) for name in sorted(names)
                 for entry in file_state(os.path.join(root, name)))
