"""The h-space file format: safetensors with JSON metadata (kind, format version, model fingerprint, grid), and the
fingerprint check every loader makes."""
from __future__ import annotations

import json

from safetensors.torch import load_file, save_file

from .sites import DEFAULT_SITE, SITES, check_site

FORMAT_VERSION = "1"


def check_fingerprint(found: str, expected: str, what: str, hint: str = "use the model it was made with") -> None:
    """Raise if a saved object was made with another model; ``hint`` says what to change."""
    if found and expected and found != expected:
        f_arch, e_arch = found.split("/")[0], expected.split("/")[0]
        part = "architecture" if f_arch != e_arch else "weights"
        raise ValueError(
            f"This {what} was made with a model of different {part} (fingerprint {found}) than the one given "
            f"({expected}); {hint}."
        )


def save_tensors(path: str, tensors: dict, kind: str, **meta) -> None:
    """Write ``tensors`` with the metadata of an h-space file of ``kind`` (read back by ``load_tensors``)."""
    meta = {"kind": kind, "format_version": FORMAT_VERSION, **meta}
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"hspace": json.dumps(meta), "shapes": json.dumps(shapes),
                        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.")})


def load_tensors(path: str, kind: str) -> tuple[dict, dict]:
    """Read an h-space safetensors file of ``kind``; a file that is not one (empty, truncated, random bytes, a huge
    header, metadata that is not JSON or lacks a key) raises a ValueError naming the file."""
    from safetensors import SafetensorError, safe_open

    label = {"h_trajectory": "h trajectory", "direction": "direction"}.get(kind, kind)

    def invalid(reason: str) -> ValueError:
        return ValueError(f"{path} is not a valid h-space {label} file ({reason}); save it again with this pack's "
                          f"Save node or pick another file.")

    try:
        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get("hspace")
        tensors = load_file(path) if raw is not None else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise invalid(f"not a readable safetensors file: {error}") from None
    if raw is None:
        raise invalid("no 'hspace' metadata")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise invalid("its metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise invalid("its metadata is not a JSON object")
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a {kind!r}: pick a {label} file.")
    implicit = meta.get("form") == "implicit"
    needs = {"h_trajectory": ("timesteps", "branches", "fingerprint", "h"),
             "direction": ("form", "fingerprint", *(("fn_config",) if implicit else ("timesteps", "delta")))}
    missing = [key for key in needs.get(kind, ()) if key not in meta and key not in tensors]
    if missing:
        raise invalid(f"missing {', '.join(missing)}")
    try:
        check_site(meta.get("site", DEFAULT_SITE))
    except ValueError:
        raise invalid(f"its metadata names the h site {meta['site']!r}, which this pack does not know: one of {SITES} "
                      "or a transformer block (double.<i>[.attn], single.<i>, joint.<i>[.attn])") from None
    return tensors, meta
