"""docs/adapters.md: its worked example runs as written, and the README links the guide."""
import os
import re

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_guides_example_runs_as_written(tmp_path, monkeypatch):
    text = open(os.path.join(ROOT, "docs", "adapters.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "docs/adapters.md", "exec"), namespace)
    report = namespace["latents"].report
    assert len(report.psnr_per_image) == 2 and min(report.psnr_per_image) > 30, report
    assert namespace["edited"].shape == namespace["mixed"].shape == (2, 3, 16, 16)
    assert torch.isfinite(namespace["edited"]).all()


def test_readme_links_the_guide():
    assert "docs/adapters.md" in open(os.path.join(ROOT, "README.md")).read()
