"""The benchmarks' counting: U-Net rows per shipped workflow through the real nodes, and the computed h sizes."""
import os
from types import SimpleNamespace

import pytest

from benchmarks import memory, workflow_passes as passes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_h_sizes_follow_the_architectures():
    sd15, sdxl = memory.h_sizes(50, 400)
    assert sd15["h_shape"] == [1, 1280, 8, 8] and sdxl["h_shape"] == [1, 1280, 32, 32]
    assert sd15["per_step_fp32"] == {1: 320 * 1024, 2: 640 * 1024}
    assert sdxl["per_step_fp32"][2] == 10 * 2**20 and sdxl["trajectory"]["float32", "all"] == 500 * 2**20
    assert sdxl["trajectory"]["float16", "edited"] * 2 * 50 == sdxl["trajectory"]["float32", "all"] * 30


def test_injection_workflow_runs_its_minimum_and_the_counter_sees_every_row(pack):
    classes = passes.setup_comfy()
    path = os.path.join(ROOT, "workflows", "api", "pixel_content_injection.json")
    result = passes.measure_workflow(path, classes, SimpleNamespace(steps=None, size=None))
    by_kind = {}
    for s in result["stats"].values():
        by_kind.setdefault(s["class_type"], []).append(s)
    graph = passes.prepared(path, None, None)
    mix = next(n["inputs"] for n in graph.values() if n["class_type"] == "HSpaceSlerpContentInject")
    steps, edited = mix["steps"], passes._edited_steps(mix["steps"], mix["t_edit"])
    injections = sorted(tuple(s["rows"]) for s in by_kind["HSpaceSlerpContentInject"])
    # the plain injection: one encoder row a step, one more decoder row per edited step; the calibrated one: a
    # full extra pass per edited step
    assert injections == [(steps, steps + edited), (steps + edited, steps + 2 * edited)]
    for s in by_kind["HSpaceSlerpContentInject"]:
        assert tuple(s["rows"]) == s["minimum"]
    for s in result["stats"].values():
        assert s["minimum"] is not None and all(r >= m for r, m in zip(s["rows"], s["minimum"])), s
