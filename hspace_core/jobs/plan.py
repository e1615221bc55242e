"""What a job is and where it stands: ``JobSpec`` (the kind, inputs, model and settings), the manifest in the
output folder that fixes its items and shards, and each shard's record, written atomically (a temporary file, then
``os.replace``) so an interrupted job loses at most the shard in flight and a rerun skips every finished one."""
from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .atomic import TEMPORARY, write_json_atomic
from .images import list_images

log = logging.getLogger("hspace.jobs")

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
KINDS = ("invert", "capture", "pca", "probe", "edit", "inject")


@dataclass(frozen=True)
class JobSpec:
    """A job: ``kind``; ``inputs`` (name → folder: "images", or "positive" and "negative" for a probe); ``model``
    (a path, see ``models.load_model``); ``settings`` (the kind's, all JSON values); ``shard_size`` images per shard;
    ``size`` (height, width) and ``channels`` every image must have; ``seed``, from which each item's seed comes."""

    kind: str
    inputs: dict
    model: str
    settings: dict = field(default_factory=dict)
    shard_size: int = 16
    size: tuple = ()
    channels: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Job kind {self.kind!r} is unknown; use one of {KINDS}.")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"--shard-size must be a whole number ≥ 1, got {self.shard_size!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be a whole number ≥ 0, got {self.seed!r}.")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    def to_json(self) -> dict:
        return {**asdict(self), "size": list(self.size)}

    @classmethod
    def from_json(cls, data: dict) -> "JobSpec":
        return cls(**{**data, "size": tuple(data.get("size", ()))})


@dataclass(frozen=True)
class Item:
    """One image of a job: its index (which fixes its seed), the input it comes from and its file name."""

    index: int
    source: str
    name: str


def item_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of a job seeded ``seed``: independent of how the items are split into shards or
    workers (numpy's SeedSequence of the pair, 63 bits)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def list_items(spec: JobSpec) -> list[Item]:
    """Every input folder's images, input by input in the order of ``spec.inputs``, each sorted by name."""
    items = []
    for source, folder in spec.inputs.items():
        items += [Item(len(items) + k, source, name) for k, name in enumerate(list_images(folder))]
    return items


@dataclass(frozen=True)
class Shard:
    """Items ``items`` of a job, computed and written together as shard ``index``."""

    index: int
    items: tuple[Item, ...]

    def to_json(self) -> dict:
        return {"index": self.index, "items": [[i.index, i.source, i.name] for i in self.items]}

    @classmethod
    def from_json(cls, data: dict) -> "Shard":
        return cls(int(data["index"]), tuple(Item(int(i), s, n) for i, s, n in data["items"]))


class Manifest:
    """``out/manifest.json``: the job and its items, fixed at the first run.  A rerun with the same job resumes;
    one with other settings, or after the input folders changed, is refused with what differs."""

    def __init__(self, out: str, spec: JobSpec, items: list[Item]):
        self.out, self.spec, self.items = out, spec, items

    @property
    def shards(self) -> list[Shard]:
        size = self.spec.shard_size
        return [Shard(k, tuple(self.items[start:start + size]))
                for k, start in enumerate(range(0, len(self.items), size))]

    def shard_path(self, index: int, suffix: str) -> str:
        return os.path.join(self.out, "shards", f"{index:05d}{suffix}")

    def record(self, index: int) -> dict | None:
        """The record of a finished shard, or None (not yet run, or interrupted before its record was written)."""
        path = self.shard_path(index, ".json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    @classmethod
    def open(cls, out: str, spec: JobSpec) -> "Manifest":
        """The manifest in ``out`` (created on the first run), after removing what an interrupted run left half
        written (temporary files)."""
        items = list_items(spec)
        path = os.path.join(out, MANIFEST)
        os.makedirs(os.path.join(out, "shards"), exist_ok=True)
        for stale in glob.glob(os.path.join(out, "**", f"*{TEMPORARY}*"), recursive=True):
            os.remove(stale)
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("job") != spec.to_json():
                differ = sorted(k for k in spec.to_json() if saved.get("job", {}).get(k) != spec.to_json()[k])
                raise ValueError(f"{out} holds another job (its {', '.join(differ)} differ{'s' if len(differ) == 1 else ''}"
                                 "): rerun with the same settings to resume it, or give another --out.")
            if saved.get("items") != [[i.source, i.name] for i in items]:
                raise ValueError(f"The input folders changed since {out} was started (images added, removed or "
                                 "renamed): restore them to resume, or give another --out for the new set.")
            return cls(out, spec, items)
        write_json_atomic(path, {"version": MANIFEST_VERSION, "job": spec.to_json(),
                                 "items": [[i.source, i.name] for i in items]})
        return cls(out, spec, items)
