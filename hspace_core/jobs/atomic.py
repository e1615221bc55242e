"""Files written whole or not at all: a temporary name beside the target, then ``os.replace`` (atomic on one file
system), so a job killed mid-write leaves no half file under the real name, only a temporary one the next run
removes (``TEMPORARY`` marks them, so no user file is mistaken for one)."""
from __future__ import annotations

import json
import os

TEMPORARY = ".hspace-tmp"


def temporary_name(path: str) -> str:
    """Where ``path`` is written before it is renamed into place (per process: two workers never share one)."""
    return f"{path}{TEMPORARY}{os.getpid()}"


def write_json_atomic(path: str, data) -> None:
    tmp = temporary_name(path)
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
