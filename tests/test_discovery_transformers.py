"""Directions on transformers (issue 38 item 3), in-process on the tiny Flux and SD3 (harness/tiny_dit.py): PCA,
probe, orthogonalised, combined and saved directions from trajectories captured on the model (H-Space Capture)
carry its block site, fingerprint and grid and edit through H-Space Asyrp Edit; the Direction Explorer on a flow
model (percent window; its t_edit sweep refused by name); H-Space Auto Schedule's LPIPS rule on the flow point
x_σ = (1 − σ)·x0 + σ·ε, against the written-out formula, and its percent outputs."""
import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning, tiny_flux, tiny_vae16
from hspace_core import Direction, find_t_edit_t_boost
from hspace_core.noise_levels import NoiseLevels

SIZE = 16  # latent 16×16 → an 8×8 patch grid
STEPS = 4
PERCENT = dict(window="percent", start_percent=0.0, end_percent=0.7, t_edit=400)


def _models(request):
    return {"flux": (request.getfixturevalue("flux"), flux_conditioning, 1.0),
            "sd3": (request.getfixturevalue("sd3"), sd3_conditioning, 3.0)}


def _latents(*seeds):
    return {"samples": torch.cat([torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(s))
                                  for s in seeds])}


def _conditioning(cond, cfg):
    return dict(positive=cond(0), negative=cond(1) if cfg != 1.0 else None, cfg=cfg, edit_branches="cond")


def _capture(model, cond, cfg, *seeds, site="middle"):
    import hspace_pack.nodes.inversion as inversion

    return inversion.Capture.execute(model=model, x_T=_latents(*seeds), steps=STEPS, site=site,
                                     **_conditioning(cond, cfg)).result


def _edit(model, cond, cfg, direction, sweep, seeds=(0,), **extra):
    import hspace_pack.nodes.editing as editing

    return editing.AsyrpEdit.execute(model=model, x_T=_latents(*seeds), direction=direction, strength=0.0,
                                     strength_sweep=sweep, steps=STEPS, seed=0, **PERCENT, **_conditioning(cond, cfg),
                                     **extra).result[0]["samples"]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_pca_probe_and_algebra_on_captured_transformer_trajectories(pack, request, family, tmp_path):
    """PCA of three captured images, a probe between two pairs, the probe orthogonalised against the components and a
    combination: each carries the model's default block site, fingerprint and grid, survives a save / load, and
    edits through H-Space Asyrp Edit (strength 0 is the capture's reconstruction bit for bit, strength 20 moves it)."""
    import hspace_pack.nodes.discovery as discovery
    import hspace_pack.nodes.editing as editing
    from hspace_pack.nodes.comfy.fingerprint import model_fingerprint
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    model, cond, cfg = _models(request)[family]
    site = "double.1.attn" if family == "flux" else "joint.1.attn"
    trajectory, _ = _capture(model, cond, cfg, 0, 1, 2)
    positive, _ = _capture(model, cond, cfg, 3, 4)
    negative, _ = _capture(model, cond, cfg, 5, 6)
    assert trajectory.site == site and trajectory.timesteps == noise_levels(model).grid(STEPS)
    pcs, pc0, info = discovery.PCADirections.execute(trajectory, 2, 0, "per_timestep", "position", "pc").result
    probe = discovery.ProbeDirection.execute(positive, negative, "logistic", "per_timestep", 0.001, "probe").result[0]
    clean = discovery.OrthogonaliseDirection.execute(probe, pc0, False, against_set=pcs).result[0]
    mixed = editing.CombineDirections.execute(pc0, 1.0, clean, 0.5, False).result[0]
    grid = tuple(trajectory.timesteps)
    for d in (*pcs, probe, clean, mixed):
        assert d.site == site and d.fingerprint == model_fingerprint(model) and tuple(d.timesteps) == grid
        assert tuple(d.delta.shape[-3:]) == tuple(trajectory.h.shape[-3:])  # (C, H/p, W/p): the spatial view
    for pc in pcs:  # Gram–Schmidt: exactly orthogonal per timestep
        dots = (clean.delta.double() * pc.delta.double()).flatten(1).sum(1)
        assert dots.abs().max() < 1e-6 * clean.delta.double().norm() * pc.delta.double().norm(), dots
    path = str(tmp_path / "pc.safetensors")
    pc0.save(path)
    loaded = Direction.load(path)
    assert (loaded.site, loaded.fingerprint, tuple(loaded.timesteps)) == (site, pc0.fingerprint, grid)
    assert torch.equal(loaded.delta, pc0.delta)
    plain = _capture(model, cond, cfg, 0)[1]["samples"]  # the capture of the edited x_T alone (batch 1)
    for d in (loaded, probe, clean, mixed):
        zero, twenty = _edit(model, cond, cfg, d, "0, 20")
        assert torch.equal(zero, plain[0]), d.name  # the capture's process, one KSAMPLER: strength 0 is it
        assert (twenty - zero).abs().mean() > 0.01 * zero.abs().mean(), d.name


def test_directions_of_another_site_or_model_are_refused_by_name(pack, flux, sd3):
    import hspace_pack.nodes.editing as editing
    import hspace_pack.nodes.discovery as discovery

    trajectory, _ = _capture(flux, flux_conditioning, 1.0, 0, 1)
    at_block, _ = _capture(flux, flux_conditioning, 1.0, 0, 1, site="double.0")
    d_attn = discovery.PCADirections.execute(trajectory, 1, 0, "global", "position", "a").result[1]
    d_block = discovery.PCADirections.execute(at_block, 1, 0, "global", "position", "b").result[1]
    assert d_block.site == "double.0"
    with pytest.raises(ValueError, match="H-Space Combine Directions: .*different sites .*direction_b at site "
                                         ".double.0."):
        editing.CombineDirections.execute(d_attn, 1.0, d_block, 1.0, False)
    with pytest.raises(ValueError, match="H-Space Orthogonalise Direction: .*different sites .*against at site "
                                         ".double.0."):
        discovery.OrthogonaliseDirection.execute(d_attn, d_block, False)
    sd3_trajectory, _ = _capture(sd3, sd3_conditioning, 3.0, 0, 1)
    d_sd3 = discovery.PCADirections.execute(sd3_trajectory, 1, 0, "global", "position", "s").result[1]
    with pytest.raises(ValueError, match="H-Space Asyrp Edit.*joint.1.attn.*double.0 … double.1"):
        _edit(flux, flux_conditioning, 1.0, d_sd3, "1")
    other = tiny_flux(seed=7)  # the same architecture, other weights
    with pytest.raises(ValueError, match="H-Space Asyrp Edit.*allow_other_model"):
        _edit(other, flux_conditioning, 1.0, d_attn, "1")


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_direction_explorer_on_a_flow_transformer(pack, request, family):
    """The explorer's grid on a flow model: the strength-0 column is the H-Space Asyrp Edit's strength-0 image (the
    plain process), the other columns differ from it, a row per direction; a t_edit sweep's rows are the explorer's
    rows with window t_edit at each value (the t widget rule: on Flux the entry at its fraction of the table)."""
    import hspace_pack.nodes.discovery as discovery

    model, cond, cfg = _models(request)[family]
    trajectory, _ = _capture(model, cond, cfg, 0, 1, 2)
    pcs = discovery.PCADirections.execute(trajectory, 2, 0, "global", "position", "pc").result[0]
    vae = tiny_vae16()
    run = lambda **extra: discovery.DirectionExplorer.execute(  # noqa: E731
        model=model, vae=vae, strengths="-20, 0, 20", steps=STEPS, scale=1, seed=0,
        **{"x_T": _latents(0), "directions": pcs, **PERCENT, **_conditioning(cond, cfg), **extra}).result[0]
    grid = run()
    plain = (vae.decode(_edit(model, cond, cfg, pcs[0], "0"))[0, ..., :3].clamp(0, 1) * 255).round() / 255
    h, w = plain.shape[:2]
    assert grid.shape[-1] == 3 and grid.shape[1] >= 2 * h and grid.shape[2] >= 3 * w  # 2 rows × 3 columns, labels
    tiles = _tiles(grid[0], plain.shape, rows=2, columns=3)
    for row in tiles:
        assert (row[1] - plain).abs().max() <= 1.5 / 255, (row[1] - plain).abs().max()  # 8-bit tiles
        assert (row[0] - plain).abs().mean() > 0.5 / 255 and (row[2] - plain).abs().mean() > 0.5 / 255
    assert not torch.equal(tiles[0][2], tiles[1][2])
    one = dict(directions=pcs[:1])
    swept = _tiles(run(t_edit_sweep="600, 200", **one)[0], plain.shape, rows=2, columns=3)
    for row, t_edit in zip(swept, (600, 200)):
        alone = _tiles(run(window="t_edit", t_edit=t_edit, **one)[0], plain.shape, rows=1, columns=3)[0]
        assert all(torch.equal(a, b) for a, b in zip(row, alone)), t_edit
    assert not torch.equal(swept[0][2], swept[1][2])  # 600 and 200 edit different steps of the grid
    with pytest.raises(ValueError, match="H-Space Direction Explorer: The explorer takes one x_T, got a batch of 2"):
        run(x_T=_latents(0, 1))


def _tiles(grid, shape, rows, columns, pad=2):
    """The tiles of a labelled grid at scale 1 (``grids.grid_image``: labels left and on top, ``pad`` around each
    tile), counted from its bottom-right corner."""
    h, w = shape[:2]
    top, left = grid.shape[0] - rows * (h + pad) - pad, grid.shape[1] - columns * (w + pad) - pad
    return [[grid[top + r * (h + pad): top + r * (h + pad) + h, left + c * (w + pad): left + c * (w + pad) + w]
             for c in range(columns)] for r in range(rows)]


def test_run_in_comfy_hands_a_flow_body_the_latent(pack, flux):
    """The bodies of run_in_comfy (Auto Schedule's probes) work on the latent (model space) on a flow model too, where
    ComfyUI's start at σ = 1 is (1 − σ)·latent = 0."""
    from harness.inprocess import run_in_comfy

    latent = _latents(0)["samples"]
    x = run_in_comfy(flux, latent, lambda m, x: x.clone(), positive=flux_conditioning(0))
    assert torch.equal(x, flux.model.process_latent_in(latent)) and x.abs().mean() > 0.1


def test_auto_schedule_probes_the_flow_point_of_the_latent_on_flux(pack, flux):
    """Through ComfyUI's sampling of the tiny Flux (run_in_comfy, as the node runs it): LPIPS(x, x_t) is measured at
    x_σ = (1 − σ)·x0 + σ·ε of the latent given at unit variance (here with MSE on the latent, so it is written out:
    mean((x_σ/√((1 − σ)² + σ²) − x0)²)), and P_t is the model's own prediction (neither x0 nor x_σ)."""
    from harness.inprocess import run_in_comfy
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    latent = _latents(0)["samples"]
    mse = lambda a, b: ((a - b) ** 2).flatten(1).mean(1)  # noqa: E731
    result = run_in_comfy(flux, latent, lambda m, x: find_t_edit_t_boost(m, x, distance=mse, num_probes=4, seed=3),
                          positive=flux_conditioning(0))
    x0 = flux.model.process_latent_in(latent)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    levels = noise_levels(flux)
    for t, d_pred, d_noisy in zip(result.timesteps, result.distance_to_prediction, result.distance_to_noisy):
        sigma = levels.sigma(t)
        x_t = ((1 - sigma) * x0 + sigma * eps) / ((1 - sigma) ** 2 + sigma ** 2) ** 0.5
        assert d_noisy == pytest.approx(float(((x_t - x0) ** 2).mean()), rel=1e-4), t
        assert 0 < d_pred and d_pred != pytest.approx(d_noisy, rel=1e-3)


class _FlowDenoiser:
    """A flow 'model' whose denoiser is D(x, σ) = k·x: enough to check the rule's flow point and prediction."""

    def __init__(self, k=0.5):
        self.k = k
        self.levels = NoiseLevels(torch.linspace(1, 1000, 1000) / 1000, "const", "flow", 3.0, "sd3")

    def denoised(self, x, sigma, edit=None, t=None):
        return self.k * x, None, None


def test_auto_schedule_on_flow_against_the_written_out_rule():
    """On flow matching the rule measures x_σ = (1 − σ)·x0 + σ·ε at unit variance and P = D(x_σ, σ) at each probed
    table entry."""
    model = _FlowDenoiser()
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mse = lambda a, b: ((a - b) ** 2).flatten(1).mean(1)  # noqa: E731
    result = find_t_edit_t_boost(model, x0, distance=mse, edit_threshold=0.3, boost_threshold=0.8, num_probes=9,
                                 seed=5)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    assert result.timesteps == tuple(round(v) for v in torch.linspace(0, 999, 9).tolist())
    for t, d_pred, d_noisy in zip(result.timesteps, result.distance_to_prediction, result.distance_to_noisy):
        sigma = model.levels.sigma(t)
        x_t = (1 - sigma) * x0 + sigma * eps
        assert d_noisy == pytest.approx(float(mse(x0, x_t / ((1 - sigma) ** 2 + sigma ** 2) ** 0.5).mean()), rel=1e-6)
        assert d_pred == pytest.approx(float(mse(x0, 0.5 * x_t).mean()), rel=1e-6)
    assert result.t_edit == next(t for t, d in zip(result.timesteps, result.distance_to_prediction) if d >= 0.3)
    assert result.t_boost == min(result.t_edit,
                                 next(t for t, d in zip(result.timesteps, result.distance_to_noisy) if d >= 0.8))


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_auto_schedule_node_on_a_flow_transformer(pack, request, family):
    """H-Space Auto Schedule runs on the tiny transformer (LPIPS with random weights: plumbing only): t_edit and
    t_boost are t widget values naming probed entries of the model's own table (``NoiseLevels.widget_t``; the entries
    themselves on SD3's 1000) and the percent outputs are ``NoiseLevels.percent_at_timestep``'s of those entries."""
    import hspace_pack.nodes.schedule as schedule
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    model, cond, cfg = _models(request)[family]
    _, image = _capture(model, cond, cfg, 0)
    t_edit, t_boost, edit_end, boost_start = schedule.AutoSchedule.execute(
        model=model, vae=tiny_vae16(), latent=image, edit_threshold=0.01, boost_threshold=0.01, text_cosine=1.0,
        probes=5, lpips_backbone="alex (random weights, testing only)", seed=0, **_conditioning(cond, cfg)).result
    levels = noise_levels(model)
    entry_edit, entry_boost = levels.widget_timestep(t_edit), levels.widget_timestep(t_boost)
    assert 0 <= t_boost <= t_edit <= 999 and entry_edit in levels.widget_timesteps(5)
    assert (entry_edit == t_edit) == (family == "sd3")
    assert (edit_end, boost_start) == (levels.percent_at_timestep(entry_edit), levels.percent_at_timestep(entry_boost))
    assert 0.0 <= edit_end <= 1.0 and 0.0 <= boost_start <= 1.0


def test_pca_explorer_and_auto_schedule_in_bfloat16(pack):
    """Flux's native dtype: the tiny Flux in bfloat16 captures, PCA's components carry its site and edit in the
    explorer (finite; ±20 change the strength-0 column), and Auto Schedule's probes run (finite LPIPS)."""
    import hspace_pack.nodes.discovery as discovery
    import hspace_pack.nodes.schedule as schedule

    bf16 = tiny_flux(dtype=torch.bfloat16)
    trajectory, image = _capture(bf16, flux_conditioning, 1.0, 0, 1, 2)
    assert trajectory.site == "double.1.attn"
    pcs = discovery.PCADirections.execute(trajectory, 1, 0, "global", "position", "pc").result[0]
    grid = discovery.DirectionExplorer.execute(
        model=bf16, x_T=_latents(0), vae=tiny_vae16(), directions=pcs, strengths="-20, 0, 20", steps=STEPS, scale=1,
        seed=0, **PERCENT, **_conditioning(flux_conditioning, 1.0)).result[0]
    assert torch.isfinite(grid).all()
    tiles = _tiles(grid[0], (SIZE * 8, SIZE * 8), rows=1, columns=3)[0]
    assert (tiles[0] - tiles[1]).abs().mean() > 0.5 / 255 and (tiles[2] - tiles[1]).abs().mean() > 0.5 / 255
    t_edit, t_boost, edit_end, boost_start = schedule.AutoSchedule.execute(
        model=bf16, vae=tiny_vae16(), latent={"samples": image["samples"][:1]}, edit_threshold=0.01,
        boost_threshold=0.01, text_cosine=1.0, probes=3, lpips_backbone="alex (random weights, testing only)", seed=0,
        **_conditioning(flux_conditioning, 1.0)).result
    assert 0 <= t_boost <= t_edit <= 999 and 0.0 <= edit_end <= boost_start <= 1.0


def test_pca_of_inverted_flux_images_drives_the_asyrp_sampler(pack, flux):
    """The SAMPLER chain: three images inverted in one batch (Inversion Sampler on flipped sigmas, Inverted x_T),
    PCA of their trajectories (per timestep, on the inversion's σ grid), and the Asyrp Sampler from one image's x_T
    on the same sigmas: strength 0 is euler bit for bit, strength 20 edits."""
    import comfy.sample
    import comfy.samplers
    import hspace_pack.nodes.discovery as discovery
    import hspace_pack.nodes.samplers as nodes

    def sample(sampler, sigmas, x, latent):
        return comfy.sample.sample_custom(flux, x, 1.0, sampler, sigmas, flux_conditioning(0), flux_conditioning(0),
                                          latent, disable_pbar=True, seed=0)

    sigmas = comfy.samplers.calculate_sigmas(flux.get_model_object("model_sampling"), "simple", 5)[1:]  # below σ = 1
    euler = comfy.samplers.sampler_object("euler")
    images = sample(euler, sigmas, _latents(0, 1, 2)["samples"], torch.zeros(3, 16, SIZE, SIZE))
    zeros = torch.zeros_like(images)
    sampler, record = nodes.InversionSampler.execute(0, "middle").result
    inverted = sample(sampler, sigmas.flip(0).clamp(min=1e-4), zeros, images)
    x_T, trajectory = nodes.InvertedXT.execute(flux, {"samples": inverted}, record).result
    assert trajectory.batch_size == 3 and trajectory.site == "double.1.attn"
    pc = discovery.PCADirections.execute(trajectory, 1, 0, "per_timestep", "position", "pc").result[1]
    assert tuple(pc.timesteps) == tuple(trajectory.timesteps) and pc.site == "double.1.attn"
    start = x_T["samples"][:1]
    plain = sample(euler, sigmas, zeros[:1], start)
    asyrp = lambda s: sample(nodes.AsyrpSampler.execute(pc, s, "percent", 500, 0.0, 0.7, 0).result[0],  # noqa: E731
                             sigmas, zeros[:1], start)
    assert torch.equal(asyrp(0.0), plain)
    assert (asyrp(20.0) - plain).abs().mean() > 0.01 * plain.abs().mean()
