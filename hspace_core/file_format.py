"""The h-space file format: safetensors with JSON metadata (kind, format version, model fingerprint, grid), and the
fingerprint check every loader makes."""
from __future__ import annotations

import json
import logging
import math
import os

from safetensors.torch import load_file, save_file

from .sites import DEFAULT_SITE, SITES, check_site

FORMAT_VERSION = "1"
log = logging.getLogger("hspace")
# A direction's saved scale multiplies every Δh, as the edit strength does; beyond 100 times the strength widget's
# own bound (±100) no edit stays in range, so a larger one is a damaged or tampered file, not a direction.
SCALE_LIMIT = 1e4
MAX_TIMESTEP = 99_999  # timesteps of any model's table (1000 for the papers' models)
MAX_TRAIN_STEPS = 1000  # DDIM steps a direction can have been learnt with (at most one per timestep)


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


def parse_json(text, what: str):
    """``json.loads``, refusing (ValueError naming ``what``) text that is not JSON or nests too deeply for Python's
    parser (it raises RecursionError: 100,000 nested brackets are a few hundred kB)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} nests too deeply to read (brackets within brackets beyond Python's recursion "
                         "limit): it is damaged.") from None
    except ValueError as error:
        raise ValueError(f"{what} is not JSON ({error}).") from None


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _timesteps(v) -> str | None:
    if not isinstance(v, list) or not all(_whole(t) and 0 <= t <= MAX_TIMESTEP for t in v):
        return f"must be a list of whole timesteps in [0, {MAX_TIMESTEP}]"
    return None


def _text(v) -> str | None:
    return None if isinstance(v, str) else "must be text"


def _scale(v) -> str | None:
    if not _number(v) or abs(v) > SCALE_LIMIT:
        return f"must be a finite number in [−{SCALE_LIMIT:g}, {SCALE_LIMIT:g}] (1 for a direction as made)"
    return None


def _branches(v) -> str | None:
    if not isinstance(v, list) or not v or not all(b in ("single", "uncond", "cond") for b in v):
        return "must be a list of 'single', 'uncond', 'cond'"
    return None


def _shape(v) -> str | None:
    return None if isinstance(v, list) and all(_whole(n) and n > 0 for n in v) else "must be a list of positive sizes"


def _extra(v) -> str | None:
    if not isinstance(v, dict):
        return "must be a JSON object"
    steps = v.get("train_steps")
    if steps is not None and not (_whole(steps) and 1 <= steps <= MAX_TRAIN_STEPS):
        return (f"has train_steps {steps!r}: it must be the whole number of DDIM steps the direction was learnt with, "
                f"in [1, {MAX_TRAIN_STEPS}] (or absent)")
    return None


def _object(v) -> str | None:
    return None if isinstance(v, dict) else "must be a JSON object"


# What each field of an h-space file's metadata must be (one rule per field, for every reader): (check, default);
# default ... marks a field the file must have.  'site' and 'kind' are checked by load_tensors itself.
FIELDS = {
    "direction": {"form": (lambda v: None if v in ("global", "per_timestep", "implicit") else
                           "must be 'global', 'per_timestep' or 'implicit'", ...),
                  "timesteps": (_timesteps, []), "fingerprint": (_text, ...), "name": (_text, ""),
                  "extra": (_extra, {}), "scale": (_scale, 1.0), "h_shape": (_shape, []), "made_with": (_text, ""),
                  "fn_config": (_object, {})},
    "h_trajectory": {"timesteps": (_timesteps, ...), "branches": (_branches, ...), "fingerprint": (_text, ...),
                     "source": (_text, ""), "made_with": (_text, "")},
}


def checked_fields(meta: dict, kind: str, path: str) -> dict:
    """The metadata fields of an h-space file of ``kind``, each checked by name, type and range (``FIELDS``), with
    the defaults of those it lacks.  A null ``made_with`` (a hand-edited file) is read as unknown, with a log line;
    any other wrong field is refused naming the file and the field."""
    fields = {}
    for name, (check, default) in FIELDS[kind].items():
        value = meta.get(name, default)
        if name == "made_with" and value is None:
            log.info("h-space: %s records made_with as null; read as unknown.", os.path.basename(path))
            value = ""
        if value is ...:
            continue  # load_tensors refused a missing required field already
        problem = check(value)
        if problem:
            raise ValueError(f"{path}: its metadata field '{name}' ({_said(value)}) {problem}; save it again with "
                             "this pack's Save node or pick another file.")
        fields[name] = value
    return fields


def _said(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"


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
        meta = parse_json(raw, "its metadata")
    except ValueError as error:
        raise invalid(str(error).rstrip(".")) from None
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
