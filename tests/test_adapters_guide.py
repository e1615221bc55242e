"""docs/adapters.md: its worked examples run as written, and the README links the guide."""
import os
import re

import torch

from docs_code import run_blocks
from guided_reference import UNetModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks() -> list[str]:
    text = open(os.path.join(ROOT, "docs", "adapters.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    return blocks


def test_the_guides_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = run_blocks(_blocks()[:1], tmp_path, "adapters")
    report = namespace["latents"].report
    assert len(report.psnr_per_image) == 2 and min(report.psnr_per_image) > 30, report
    assert namespace["edited"].shape == namespace["mixed"].shape == (2, 3, 16, 16)
    assert torch.isfinite(namespace["edited"]).all()


def test_the_edm_checkpoint_example_runs_as_written(tmp_path, monkeypatch):
    """The guide's EDM checkpoint: a tiny UNetModel's state dict saved as my_edm.pt, loaded by the block alone."""
    torch.manual_seed(0)
    network = UNetModel(model_channels=32, channel_mult=(1, 2), num_heads=2, use_scale_shift_norm=True).eval()
    torch.save(network.state_dict(), str(tmp_path / "my_edm.pt"))
    monkeypatch.chdir(tmp_path)
    namespace = run_blocks(_blocks()[1:2], tmp_path, "adapters_edm")
    model = namespace["model"]
    assert type(model).__name__ == "Denoiser" and model.fn.parameterization == "edm"
    x, sigma = torch.randn(1, 3, 16, 16), torch.tensor([2.0])
    total = sigma**2 + 0.25
    with torch.no_grad():  # D(x, σ) is EDM's preconditioning around the saved network
        expected = 0.25 / total * x + sigma * 0.5 / total.sqrt() * network(x / total.sqrt(), sigma.log() / 4)
        assert torch.allclose(model.fn(x, sigma), expected, atol=1e-5)
    assert min(namespace["edm_latents"].report.psnr_per_image) > 30
    shown = repr(namespace["edm_latents"])  # says where h was read, since capture reads it elsewhere
    assert "h along the inversion (h_source='inversion'); capture(model, x_T) reads h along the reconstruction" in shown
    edited = namespace["edm_edited"]
    assert edited.shape == (2, 3, 16, 16) and torch.isfinite(edited).all()
    assert (edited - namespace["edm_latents"].reconstruction).abs().max() > 1e-2  # the edit changed the image


def test_readme_links_the_guide():
    assert "docs/adapters.md" in open(os.path.join(ROOT, "README.md")).read()
