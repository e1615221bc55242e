"""hspace_core.pca, .jacobian, .probes, .direction_algebra and .explorer: PCA, Jacobian and probe directions, direction
algebra, the explorer."""
import math

import pytest
import torch

import hspace_core as hs
from harness.tiny import GaussianData, tiny_pixel_unet

SHAPE = (4, 2, 2)  # C, H, W: D = 16


def _planted(n=200, steps=3, seed=0, scales=(6.0, 3.0), noise=0.1, shape=SHAPE):
    """h = mean_t + Σ_i z_i·scale_i·u_i + small isotropic noise, with known orthonormal u_i that carry the same
    energy at every spatial position (so per-position normalisation leaves them be)."""
    g = torch.Generator().manual_seed(seed)
    c, positions = shape[0], shape[1] * shape[2]
    per_position = torch.linalg.qr(torch.randn(positions, c, len(scales), generator=g, dtype=torch.float64))[0]
    u = (per_position.permute(2, 1, 0).reshape(len(scales), -1) / math.sqrt(positions)).float()
    d = math.prod(shape)
    z = torch.randn(steps, n, len(scales), generator=g)
    h = torch.einsum("snk,k,kd->snd", z, torch.tensor(scales), u) + noise * torch.randn(steps, n, d, generator=g)
    h = h + 5 * torch.randn(steps, 1, d, generator=g)  # per-timestep means
    return hs.HTrajectory(tuple(range(900, 900 - 100 * steps, -100)), h.reshape(steps, n, *shape), fingerprint="fp"), u


@pytest.mark.parametrize("form", ["global", "per_timestep"])
@pytest.mark.parametrize("normalisation", ["none", "position"])
def test_pca_recovers_planted_directions(form, normalisation):
    traj, u = _planted()
    dirs = hs.pca_directions(traj, 2, form=form, normalisation=normalisation)
    assert [d.metadata["component"] for d in dirs] == [0, 1] and all(d.metadata["method"] == "pca" for d in dirs)
    assert dirs[0].metadata["explained_variance"] > dirs[1].metadata["explained_variance"] > 0.1
    for d, planted, scale in zip(dirs, u, (6.0, 3.0)):
        deltas = d.delta.reshape(1 if form == "global" else 3, -1)
        for delta in deltas:
            cos = abs(float(delta @ planted) / float(delta.norm()))
            assert cos > 0.99, cos
            assert float(delta.norm()) == pytest.approx(scale, rel=0.15)  # one standard deviation along it
    if form == "per_timestep":  # signs agree along t
        deltas = dirs[0].delta.flatten(1)
        assert all(float(a @ b) > 0 for a, b in zip(deltas[:-1], deltas[1:]))


def test_position_normalisation_tames_an_outlier_position():
    """One spatial position with huge isotropic variance takes PC 1 without normalisation; with per-position
    normalisation PC 1 is the planted direction on the other positions (at the outlier position it keeps a part,
    noise correlated with the score, scaled back to h units)."""
    g = torch.Generator().manual_seed(3)
    traj, u = _planted(noise=0.01)
    h = traj.h.clone()
    h[:, :, :, 0, 0] += 40 * torch.randn(h.shape[0], h.shape[1], h.shape[2], generator=g)
    outlier = hs.HTrajectory(traj.timesteps, h)
    plain = hs.pca_directions(outlier, 1, normalisation="none")[0].delta
    assert plain[:, 0, 0].norm() / plain.norm() > 0.95
    tamed = hs.pca_directions(outlier, 1, normalisation="position")[0].delta
    rest = torch.ones(SHAPE, dtype=torch.bool)
    rest[:, 0, 0] = False
    planted = u[0].reshape(SHAPE)[rest]
    assert abs(float(tamed[rest] @ planted)) / float(tamed[rest].norm() * planted.norm()) > 0.95


def test_pca_bad_input():
    traj, _ = _planted(n=4, steps=1)
    with pytest.raises(ValueError, match="rank 3: set k between 1 and 3"):
        hs.pca_directions(traj, 5)
    with pytest.raises(ValueError, match="at least 2 images"):
        hs.pca_directions(traj.select([0]), 1)
    with pytest.raises(ValueError, match="NaN"):
        hs.principal_components(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1, (2, 1, 1))
    with pytest.raises(ValueError, match="normalisation"):
        hs.pca_directions(traj, 1, normalisation="whiten")
    other, _ = _planted(n=4, steps=2)
    with pytest.raises(ValueError, match="same steps"):
        hs.pca_directions([traj, other], 1)


def test_pca_directions_save_and_load_with_metadata(tmp_path):
    traj, _ = _planted()
    d = hs.pca_directions(traj, 1, form="per_timestep")[0]
    d.save(str(tmp_path / "d.safetensors"))
    back = hs.Direction.load(str(tmp_path / "d.safetensors"))
    assert back.metadata == d.metadata and torch.equal(back.delta, d.delta) and back.timesteps == d.timesteps


def _dense_jacobian(model, x, t, h0):
    f = lambda h: model.predict(x, t, edit=lambda _h, _t, _b: h[None]).eps_edited[0]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.jacobian(f, h0[0]).reshape(x[0].numel(), h0[0].numel()).double()


def test_jacobian_directions_match_the_dense_jacobian():
    """A tiny U-Net (attention in its decoder; h = 32×2×2): the subspace iteration's vectors are the top right-singular
    vectors of the Jacobian built densely by autograd, with its singular values."""
    model = hs.DiffusersUNet(tiny_pixel_unet(size=8))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8, generator=g)
    t = 500
    with torch.no_grad():
        h0 = model.predict(x, t).h
    dense = _dense_jacobian(model, x, t, h0)
    _, s, vh = torch.linalg.svd(dense)
    dirs = hs.jacobian_directions(model, x, t, 3, iterations=60, oversample=4, relative_norm=0.2)
    for i, d in enumerate(dirs):
        v = d.delta.flatten().double()
        assert float(v.norm()) == pytest.approx(0.2 * float(h0.norm()), rel=1e-4)
        assert abs(float(v @ vh[i])) / float(v.norm()) > 0.99, i
        assert d.metadata["singular_value"] == pytest.approx(float(s[i]), rel=1e-3)
        assert d.metadata["method"] == "jacobian" and d.metadata["t"] == t
        assert d.made_with == f"Jacobian of eps at t = {t}"
    x0_dirs = hs.jacobian_directions(model, x, t, 1, output="x0", iterations=60, oversample=4)
    a = model.schedule.alpha_bar(t)
    assert x0_dirs[0].metadata["singular_value"] == pytest.approx(float(s[0]) * math.sqrt((1 - a) / a), rel=1e-3)
    with pytest.raises(ValueError, match="one image"):
        hs.jacobian_directions(model, x.repeat(2, 1, 1, 1), t, 1)
    with pytest.raises(ValueError, match="set k between 1 and 192"):
        hs.jacobian_directions(model, x, t, 193)


def test_jacobian_directions_on_an_analytic_model():
    """GaussianData: ε_edited = ε + upsample(h̃ − h), so J = upsampling by 2 (all singular values 2)."""
    model = GaussianData(torch.zeros(1, 1, 4, 4))
    dirs = hs.jacobian_directions(model, torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)), 300, 2,
                                  iterations=3)
    assert [d.metadata["singular_value"] for d in dirs] == pytest.approx([2.0, 2.0], rel=1e-6)


def _separable(n=40, d=16, seed=0):
    """Two classes separated along e_0 by a margin, with large shared variance along e_1 correlated with the label
    (so the mean difference tilts toward e_1 while the max-margin normal is e_0)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g) * 0.3
    x[:, 0] = torch.where(y == 1, 1.0, -1.0) + 0.2 * torch.rand(n, generator=g) * torch.where(y == 1, 1.0, -1.0)
    x[:, 1] = 3 * torch.randn(n, generator=g) + 2.0 * y
    return x, y


@pytest.mark.parametrize("method", ["logistic", "svm"])
def test_probes_separate_and_point_to_the_positives(method):
    x, y = _separable()
    w = hs.linear_probe(x, y, method, l2=1e-4)
    assert float(w.norm()) == pytest.approx(1.0)
    scores = (x - x.mean(0)).double() @ w
    assert bool(((scores > 0).long() == y).all())  # separates the training set
    assert float((x[y == 1].mean(0) - x[y == 0].mean(0)).double() @ w) > 0  # points to the positives
    mean_diff = hs.linear_probe(x, y, "mean_difference")
    assert abs(float(w[0])) > abs(float(mean_diff[0]))  # closer to the separating axis than the mean difference
    with torch.inference_mode():  # as in a ComfyUI node
        assert torch.allclose(hs.linear_probe(x.clone(), y.clone(), method, l2=1e-4), w)


def _class_trajectories(n=20, steps=2):
    x, y = _separable(n=2 * n)
    h = x.reshape(1, 2 * n, 4, 2, 2).repeat(steps, 1, 1, 1, 1)
    traj = hs.HTrajectory((800, 400)[:steps], h, fingerprint="fp")
    return traj.select(torch.nonzero(y == 1)[:, 0].tolist()), traj.select(torch.nonzero(y == 0)[:, 0].tolist())


@pytest.mark.parametrize("form", ["per_timestep", "global"])
@pytest.mark.parametrize("method", ["logistic", "svm", "mean_difference"])
def test_probe_direction_from_trajectories(method, form):
    positive, negative = _class_trajectories()
    d = hs.probe_direction(positive, negative, method, form=form)
    assert d.form == form and d.metadata["method"] == method
    delta = d.delta.reshape(-1, 16)
    mean_diff = hs.direction_from_examples(positive, negative).delta.reshape(-1, 16)
    assert all(float(a @ b) > 0 for a, b in zip(delta, mean_diff))
    if method == "mean_difference":
        assert torch.allclose(delta, mean_diff.mean(0, keepdim=True) if form == "global" else mean_diff, atol=1e-5)
    else:
        assert d.metadata["train_accuracy"] == 1.0


def test_probe_bad_input():
    x, y = _separable()
    with pytest.raises(ValueError, match="40 labels for 39 rows"):
        hs.linear_probe(x[:39], y)
    with pytest.raises(ValueError, match="negative class is empty"):
        hs.linear_probe(x, torch.ones_like(y))
    with pytest.raises(ValueError, match="NaN"):
        hs.linear_probe(torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1]))
    positive, negative = _class_trajectories()
    with pytest.raises(ValueError, match="method"):
        hs.probe_direction(positive, negative, "forest")


def _dirs(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = hs.Direction("global", torch.randn(*SHAPE, generator=g), name="a")
    b = hs.Direction("per_timestep", torch.randn(3, *SHAPE, generator=g), (900, 800, 700), name="b")
    c = hs.Direction("global", torch.randn(*SHAPE, generator=g), name="c", scale=2.0)
    return a, b, c


def test_orthogonalise_is_exact():
    a, b, c = _dirs()
    ga = hs.orthogonalise(a, [c])
    assert ga.form == "global"
    assert abs(float(ga.delta.flatten() @ c.delta.flatten())) < 1e-5 * float(ga.delta.norm() * c.delta.norm())
    both = hs.orthogonalise(a, [b, c, c])  # a repeated direction is harmless
    assert both.form == "per_timestep" and both.timesteps == b.timesteps
    for k in range(3):
        v = both.delta[k].flatten().double()
        for other in (b.delta[k], c.delta):
            assert abs(float(v @ other.flatten().double())) < 1e-5 * float(v.norm() * other.norm())
    assert hs.orthogonalise(a, []) is a
    assert a.delta.norm() > 0  # inputs untouched
    kept = hs.rescale_like(both, a)
    assert torch.allclose(kept.delta.flatten(1).norm(dim=1), a.delta.norm().expand(3), rtol=1e-5)
    parallel = hs.orthogonalise(a, [a.scaled(-3)])
    assert float(parallel.delta.norm()) < 1e-5


def test_combine_and_normalise_and_strength():
    a, b, c = _dirs()
    total = hs.combine([a, b, c], [1.0, -0.5, 2.0])
    assert torch.allclose(total.delta[1], a.delta - 0.5 * b.delta[1] + 4.0 * c.delta, atol=1e-5)
    assert torch.allclose(hs.combine([a, c], [1, 1], normalize=True).delta, (a.delta + 2 * c.delta) / math.sqrt(2),
                          atol=1e-6)
    with pytest.raises(ValueError, match="one weight each"):
        hs.combine([a, b], [1.0])
    traj, _ = _planted()
    unit = hs.normalise(b, traj, 0.25)
    assert hs.relative_strength(unit, traj).tolist() == pytest.approx([0.25] * 3, rel=1e-5)
    ga = hs.normalise(a, traj, 0.5)
    norms = traj.h.flatten(2).norm(dim=-1).mean(1)
    assert float(ga.delta.norm()) == pytest.approx(0.5 * float(norms.mean()), rel=1e-5)


def test_explore_rows_are_directions_columns_are_strengths():
    model = hs.DiffusersUNet(tiny_pixel_unet(size=8))
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    schedule = hs.EditSchedule(6, t_edit=400)
    with torch.no_grad():
        h = hs.capture(model, x_T, 6).h
    d = [hs.Direction("global", torch.randn(h.shape[2:], generator=torch.Generator().manual_seed(i))) for i in (1, 2)]
    with torch.no_grad():
        grid = hs.explore(model, x_T, d, [-1.0, 0.0, 2.0], schedule)
        plain = hs.generate(model, x_T, schedule)
        single = hs.edit(model, x_T, d[1], 2.0, schedule)
    assert grid.shape == (2, 3, 3, 8, 8)
    assert torch.allclose(grid[0, 1], plain[0], rtol=1e-4, atol=1e-3) and torch.allclose(grid[1, 1], plain[0], rtol=1e-4, atol=1e-3)
    assert torch.allclose(grid[1, 2], single[0], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="one x_T"):
        hs.explore(model, x_T.repeat(2, 1, 1, 1), d, [1.0], schedule)


def test_explore_t_edit_axis_gives_one_labelled_row_per_direction_and_t_edit():
    model = hs.DiffusersUNet(tiny_pixel_unet(size=8))
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    schedule = hs.EditSchedule(6, t_edit=400)
    with torch.no_grad():
        h = hs.capture(model, x_T, 6).h
    d = [hs.Direction("global", torch.randn(h.shape[2:], generator=torch.Generator().manual_seed(i)), name=f"d{i}")
         for i in (1, 2)]
    with torch.no_grad():
        grid = hs.explore(model, x_T, d, [0.0, 2.0], schedule, t_edits=[800, 200])
        late = hs.edit(model, x_T, d[1], 2.0, hs.EditSchedule(6, t_edit=200))
        early = hs.edit(model, x_T, d[1], 2.0, hs.EditSchedule(6, t_edit=800))
    assert grid.shape == (4, 2, 3, 8, 8)
    assert torch.allclose(grid[3, 1], late[0], rtol=1e-4, atol=1e-3) and torch.allclose(grid[2, 1], early[0], rtol=1e-4, atol=1e-3)
    assert (grid[3, 1] - grid[2, 1]).abs().max() > 1e-3, "a longer edit interval changes more"
    labels = [label for _, _, label in hs.explorer_rows(d, [800, 200])]
    assert labels == ["d1 @ t≥800", "d1 @ t≥200", "d2 @ t≥800", "d2 @ t≥200"]
    with pytest.raises(ValueError, match="t_edit must be a timestep"):
        hs.explore(model, x_T, d, [1.0], schedule, t_edits=[1200])


def test_discovery_keeps_the_site_and_refuses_mixtures():
    up1 = hs.DiffusersUNet(tiny_pixel_unet(size=8), site="up1")
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        traj = hs.capture(up1, x, 4)
    pcs = hs.pca_directions(traj, 2)
    assert traj.site == "up1" and all(p.site == "up1" for p in pcs)
    assert hs.probe_direction(traj.select([0, 1]), traj.select([2]), "mean_difference").site == "up1"
    assert hs.orthogonalise(pcs[0], pcs[1:]).site == "up1" and hs.combine(pcs, [1, 1]).site == "up1"
    assert hs.jacobian_directions(up1, x[:1], 500, 2, iterations=2)[0].site == "up1"
    middle = hs.Direction("global", torch.randn(pcs[0].h_shape))
    with pytest.raises(ValueError, match="different h sites"):
        hs.orthogonalise(pcs[0], [middle])
    with pytest.raises(ValueError, match="set site to 'up1'"):
        hs.explore(hs.DiffusersUNet(tiny_pixel_unet(size=8)), x[:1], pcs, [1.0], hs.EditSchedule(4, t_edit=400))


def test_latent_at_follows_the_ddim_path():
    """x_t at every grid point equals the deterministic DDIM path written out (DDIM eq. 12, η = 0); a t between grid
    points takes the nearest one."""
    model = GaussianData(0.3 * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = hs.timestep_grid(10, 1000, "asyrp")
    ab = model.schedule.alpha_bar
    path, x = {}, x_T
    for t, t_prev in hs.step_pairs(grid):
        path[t] = x
        e = model.eps(x, t)
        x = math.sqrt(ab(t_prev)) * (x - math.sqrt(1 - ab(t)) * e) / math.sqrt(ab(t)) + math.sqrt(1 - ab(t_prev)) * e
    for t in grid:
        x_t, found = hs.latent_at(model, x_T, t, 10)
        assert found == t and torch.allclose(x_t, path[t], atol=1e-12, rtol=0), t
    upper, lower = grid[4], grid[5]
    for asked, nearest in ((upper - 1, upper), (lower + 1, lower), (upper - 50, upper), (lower + 50, lower)):
        x_t, found = hs.latent_at(model, x_T, asked, 10)
        assert found == nearest and torch.equal(x_t, hs.latent_at(model, x_T, nearest, 10)[0]), (asked, found)


def test_degenerate_inputs_are_named_not_turned_into_nan(caplog):
    traj, _ = _planted(n=6, steps=2)
    d = hs.direction_from_examples(traj.select([0, 1, 2]), traj.select([3, 4, 5]))
    with caplog.at_level("INFO", logger="hspace"):
        zero = hs.orthogonalise(d, [d])
    assert torch.count_nonzero(zero.delta) == 0 and "nothing is left" in caplog.text  # exactly zero, said
    with pytest.raises(ValueError, match="Nothing is left .*keep_norm off"):
        hs.rescale_like(zero, d)
    twins = hs.HTrajectory(traj.timesteps, traj.h[:, :1].repeat(1, 3, 1, 1, 1), fingerprint="fp")
    with pytest.raises(ValueError, match="all the same"):
        hs.pca_directions(twins, 1)
    with pytest.raises(ValueError, match="the same h"):
        hs.probe_direction(traj, traj)
