"""The demo-model benchmark script runs end to end on a tiny budget and reports what the docs table expects."""
import math

import torch

from benchmarks import demo_model as bench
from hspace_demo.run import load_model


def test_benchmark_runs_on_two_pairs_and_writes_every_section():
    with torch.no_grad():
        results = bench.evaluate(load_model(), pairs=2, steps=10, log=lambda *args: None, inversion_steps=(5, 10, 20))
    psnr = {key: value[0] for key, value in results["inversion"].items()}
    for n in (5, 10, 20):
        assert psnr[(n, 1)] > psnr[(n, 0)] + 3, psnr  # one fixed-point refinement pays off at every step count
    assert psnr[(5, 0)] < psnr[(10, 0)] < psnr[(20, 0)], psnr
    assert all(math.isfinite(v) and v >= 0 for v in results["h_swap"].values())
    assert set(results["gamma_sweep_t_edit_400"]) == {round(0.1 * i, 1) for i in range(11)}
    assert results["baseline_style_reconstruction"]["iou_style"] > 0.8  # reconstructing the style keeps its shape
    assert {t for _, t in results["shape_direction"]} == {400, 200}
    assert all(v > 0 for v in results["timings"].values())

    text = bench.to_markdown(results, pairs=2, steps=10)
    for heading in ("## How much h carries", "## DDIM inversion (2 images)", "## Content injection (DiffStyle)",
                    "## Asyrp size direction", "## Asyrp shape direction", "## Samples from pure noise",
                    "## Against the floors", "## Timings"):
        assert heading in text
    floors = text.split("## Against the floors")[1].split("##")[0]
    assert floors.count("| yes |") + floors.count("| **no** |") == len(bench.FLOORS)
    assert set(results["samples"]) == {(n, c, eta) for n in (20, 50, 100) for c, eta in bench.SAMPLERS}
    inversion_table = text.split("## DDIM inversion")[1].split("##")[0]
    assert "| 5 | " in inversion_table and "| 100 | " not in inversion_table  # the step counts measured
    assert text.count("| square → circle | 200 |") == 3 and text.count("| γ = ") == 11 + 3 + 3 + 4 + 1


def test_report_rewrite_keeps_the_hand_written_sections(tmp_path):
    path = str(tmp_path / "report.md")
    bench.write_report(path, "## Timings\n\n- old: 1.000 s\n")
    assert "written by hand" not in open(path, encoding="utf-8").read()
    with open(path, "a", encoding="utf-8") as f:
        f.write(bench.HAND_WRITTEN.lstrip("\n") + "; the ones above are regenerated.*\n\nWhat was tried.\n")
    bench.write_report(path, "## Timings\n\n- new: 2.000 s\n")
    text = open(path, encoding="utf-8").read()
    assert "- new: 2.000 s\n\n---\n\n*The sections below" in text and "old: 1.000" not in text
    assert text.count("What was tried.") == 1 and text.endswith("What was tried.\n")
