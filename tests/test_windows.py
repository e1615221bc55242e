"""Edit windows as the paper's t_edit or core's start/end percent (``nodes/layer/resolution.py``): a percent window edits
exactly the grid steps whose σ lies in it, the t_edit default is bit-identical to the t_edit path, and a window
whose start is after its end is refused by every node that has one, naming the node and the widget."""
import pytest
import torch

from harness.inprocess import latent_out, run_in_comfy
from hspace_core import Direction, EditSchedule, combine_directions
from hspace_core.sampling import SigmaWindow, schedule_in_window

from test_comfy_one_call import conditioning, tiny_sd
from test_memory_rows import _custom_sampler
from test_node_layer import Untouchable, _good_value


@pytest.fixture(scope="module")
def layer(pack):
    import hspace_pack.nodes as nodes
    from comfy_api.latest import io

    return nodes, io


def origin_of(x_T):
    from hspace_pack.nodes.layer import origin_of

    return origin_of(x_T)


def test_schedule_in_window_edits_the_grid_timesteps_whose_sigma_is_inside():
    schedule = EditSchedule(10, t_edit=400)
    sigma = {t: float(t) for t in range(1000)}.__getitem__  # any increasing σ_t
    windowed = schedule_in_window(schedule, SigmaWindow(700.0, 300.0, "percent x"), sigma)
    grid = schedule.timesteps()
    assert windowed.edit_timesteps == tuple(t for t in grid if 300 <= t <= 700) != ()
    assert [t for t in grid if windowed.edits_at(t)] == list(windowed.edit_timesteps)
    assert windowed.t_edit == min(windowed.edit_timesteps) and windowed.made_with == "percent x"
    with pytest.raises(ValueError, match="t_boost"):  # an edit reaching into the boost's steps
        schedule_in_window(EditSchedule(10, t_edit=400, t_boost=500), SigmaWindow(700.0, 300.0), sigma)


def edited_steps(monkeypatch, pack):
    """A hook on the pack's h-space model: (timestep, edited?) of every prediction a node's loop asks for."""
    from hspace_pack.nodes.comfy.model import ComfyHSpaceModel

    seen, inner = [], ComfyHSpaceModel.denoised

    def denoised(self, x, sigma, edit=None, t=None):
        seen.append((t, edit is not None))
        return inner(self, x, sigma, edit, t)

    monkeypatch.setattr(ComfyHSpaceModel, "denoised", denoised)
    return seen


def _asyrp_edit(nodes, model, x_T, direction, **window):
    positive, _ = conditioning()
    return nodes.editing.AsyrpEdit.execute(model=model, x_T={"samples": x_T}, direction=direction, strength=2.0,
                                           steps=8, t_edit=400, seed=3, cfg=1.0, edit_branches="cond",
                                           positive=positive, **window).result[0]["samples"]


def _direction(model, x_T):
    positive, _ = conditioning()
    with torch.inference_mode():
        h = run_in_comfy(model, x_T, lambda m, x: m.predict(x, 500).h, positive=positive)
    return Direction("global", torch.randn(h.shape[1:], generator=torch.Generator().manual_seed(5)))


def _edit_inputs():
    """The tiny SD model, an x_T and a random direction at its h's shape."""
    model = tiny_sd()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    return model, x_T, _direction(model, x_T)


@pytest.mark.parametrize("start, end", [(0.0, 0.6), (0.3, 0.8), (0.4, 0.6)])
def test_asyrp_edit_with_a_percent_window_edits_exactly_the_grid_steps_inside(pack, layer, monkeypatch, start, end):
    nodes, _ = layer
    model, x_T, direction = _edit_inputs()
    ms = model.get_model_object("model_sampling")
    lo, hi = float(ms.percent_to_sigma(end)), float(ms.percent_to_sigma(start))
    grid = EditSchedule(8).timesteps()
    seen = edited_steps(monkeypatch, pack)
    with torch.inference_mode():
        _asyrp_edit(nodes, model, x_T, direction, window="percent", start_percent=start, end_percent=end)
    assert seen == [(t, lo <= float(ms.sigmas[t]) <= hi) for t in grid] and any(e for _, e in seen), seen


def test_asyrp_edit_t_edit_default_is_bit_identical_to_the_t_edit_path(pack, layer):
    nodes, _ = layer
    model, x_T, direction = _edit_inputs()
    positive, _ = conditioning()
    with torch.inference_mode():
        default = _asyrp_edit(nodes, model, x_T, direction)
        said = _asyrp_edit(nodes, model, x_T, direction, window="t_edit", start_percent=0.9, end_percent=1.0)
        today = run_in_comfy(
            model, x_T, lambda m, x: nodes.comfy.samplers.run_h_edit(
                m, x, combine_directions([direction], [2.0 * direction.step_scale(8)]), EditSchedule(8, t_edit=400),
                seed=3), positive=positive, rows=2)
        # a percent window holding the same grid steps as t ≥ 400 gives the same image, bit for bit
        ms = model.get_model_object("model_sampling")
        grid = EditSchedule(8).timesteps()
        lowest = min(t for t in grid if t >= 400)
        end = next(p / 1000 for p in range(1001) if float(ms.percent_to_sigma(p / 1000)) <= float(ms.sigmas[lowest]))
        same = _asyrp_edit(nodes, model, x_T, direction, window="percent", start_percent=0.0, end_percent=end)
    assert torch.equal(default, said)
    assert torch.equal(default, latent_out(model, today)["samples"])
    assert torch.equal(default, same)


def test_every_node_with_a_window_refuses_start_after_end_by_name(layer):
    nodes, io = layer
    checked = []
    for node in nodes.NODES:
        schema = node.define_schema()
        ids = {s.id for s in schema.inputs}
        if not {"window", "start_percent", "end_percent"} <= ids:
            continue
        inputs = {s.id: _good_value(s, io) if isinstance(s, io.WidgetInput) else Untouchable() for s in schema.inputs
                  if not s.optional or isinstance(s, io.WidgetInput)}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        inputs.update(window="percent", start_percent=0.8, end_percent=0.2)
        with pytest.raises(ValueError) as caught:
            node.execute(**inputs)
        message = str(caught.value)
        assert message.startswith(f"{schema.display_name}: ") and "start_percent" in message, message
        checked.append(schema.node_id)
    assert {"HSpaceAsyrpEdit", "HSpaceAsyrpSampler", "HSpaceContentInjectionSampler", "HSpaceDirectionExplorer",
            "HSpaceStyleIDFeatures", "HSpaceStyleIDInject", "HSpaceTrainAsyrpDirection"} <= set(checked), checked


def test_a_percent_window_holding_no_grid_step_is_refused_by_name(pack, layer):
    nodes, _ = layer
    model = tiny_sd()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="^H-Space Asyrp Edit: No step of the 8-step schedule lies in the edit window "
                                         "percent 0.50–0.50, so nothing would be edited: widen the window"):
        _asyrp_edit(nodes, model, x_T, Direction("global", torch.zeros(8, 2, 2)), window="percent", start_percent=0.5,
                    end_percent=0.5)


# --- the quality boost's start as a percent (BoostSettings.start_percent, resolved by NoiseLevels.boost_t_boost) ---

@pytest.mark.parametrize("percent", [0.05, 0.3, 0.8, 0.95, 1.0])
def test_a_boost_percent_resolves_to_the_timesteps_whose_sigma_is_below_its_sigma(pack, percent):
    from hspace_core import BoostSettings
    from hspace_pack.nodes.comfy.noise_levels import boost_t_boost

    model = tiny_sd()
    ms = model.get_model_object("model_sampling")
    t_boost = boost_t_boost(BoostSettings(0, 1.0, 0, start_percent=percent), model)
    sigma = float(ms.percent_to_sigma(percent))
    assert [t < t_boost for t in range(len(ms.sigmas))] == [float(s) < sigma for s in ms.sigmas]
    assert boost_t_boost(BoostSettings(321, 1.0, 0), model) == 321 and boost_t_boost(None, model) == 0


def _boosts(nodes, percent, t_boost, seed=11):
    by_percent = nodes.injection.QualityBoost.execute(t_boost=999, eta=1.0, seed=seed, window="percent",
                                                      boost_start_percent=percent).result[0]
    by_t = nodes.injection.QualityBoost.execute(t_boost=t_boost, eta=1.0, seed=seed).result[0]
    return by_percent, by_t


def test_a_boost_percent_gives_the_eta_steps_of_the_equivalent_t_boost_in_asyrp_edit(pack, layer):
    nodes, _ = layer
    model, x_T, direction = _edit_inputs()
    # the 8-step grid is 999, 856, …, 142, 0: σ(0.8) lies at t = 199.8, so t < 200 (t = 142, 0) is stochastic
    by_percent, by_t = _boosts(nodes, 0.8, 200)
    schedule = nodes.layer.edit_schedule(8, 400, by_percent, model)
    assert [t for t in EditSchedule(8).timesteps() if schedule.eta_at(t) > 0] == [142, 0]
    with torch.inference_mode():
        percent = _asyrp_edit(nodes, model, x_T, direction, boost=by_percent)
        t_boost = _asyrp_edit(nodes, model, x_T, direction, boost=by_t)
        plain = _asyrp_edit(nodes, model, x_T, direction)
    assert torch.equal(percent, t_boost)
    assert not torch.equal(percent, plain)  # the boost's noise shows, so the equality is about its steps


def _sampled(nodes, model, boost, sigmas, direction):
    sampler = nodes.samplers.AsyrpSampler.execute(direction, 1.5, "t_edit", 400, 0.0, 1.0, 0, "cond", boost=boost,
                                                  allow_other_model=True).result[0]
    return _custom_sampler(model, sampler, torch.zeros(1, 4, 16, 16), sigmas)


def test_a_boost_percent_gives_the_eta_steps_of_the_equivalent_t_boost_in_the_samplers(pack, layer):
    nodes, _ = layer
    model = tiny_sd()
    direction = _direction(model, torch.zeros(1, 4, 16, 16))
    table = model.get_model_object("model_sampling").sigmas.float()
    sigmas = torch.cat([table[list(EditSchedule(8).timesteps())], torch.zeros(1)])  # the DDIM grid's σ
    by_percent, by_t = _boosts(nodes, 0.8, 200)
    with torch.inference_mode():
        percent, t_boost = (_sampled(nodes, model, b, sigmas, direction) for b in (by_percent, by_t))
        plain = _sampled(nodes, model, None, sigmas, direction)
        later = _sampled(nodes, model, _boosts(nodes, 0.6, 200)[0], sigmas, direction)  # t < 399.6: one step more
    assert torch.equal(percent, t_boost)
    assert not torch.equal(percent, plain) and not torch.equal(percent, later)


def test_a_boost_percent_reaching_into_the_edit_is_refused_by_widget(pack, layer):
    nodes, _ = layer
    model = tiny_sd()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    early = _boosts(nodes, 0.3, 200)[0]  # stochastic below t ≈ 699, t_edit is 400
    with pytest.raises(ValueError, match=r"^H-Space Asyrp Edit: t_edit \(400\) is below the H-Space Quality Boost's "
                                         r"boost_start_percent \(0.3, stochastic below t = 700\): raise t_edit on "
                                         "this node or raise boost_start_percent"):
        _asyrp_edit(nodes, model, x_T, Direction("global", torch.zeros(8, 2, 2)), boost=early)
    everything = _boosts(nodes, 0.0, 200)[0]
    with pytest.raises(ValueError, match="^H-Space Asyrp Edit: .*boost_start_percent \\(0.0\\) makes every step"):
        _asyrp_edit(nodes, model, x_T, Direction("global", torch.zeros(8, 2, 2)), boost=everything, window="percent")
    with pytest.raises(ValueError, match="^H-Space Quality Boost: boost_start_percent is 1.5"):
        nodes.injection.QualityBoost.execute(t_boost=200, eta=1.0, seed=0, window="percent", boost_start_percent=1.5)


# --- the discovery, StyleID and CLIP training nodes: a percent window is the equivalent t window on the DDIM grid ---

def _grid_inside(model, steps, start, end):
    """The timesteps of the steps-grid whose σ lies in the percent window [start, end], from the definition."""
    ms = model.get_model_object("model_sampling")
    lo, hi = float(ms.percent_to_sigma(end)), float(ms.percent_to_sigma(start))
    return [t for t in EditSchedule(steps).timesteps() if lo <= float(ms.sigmas[t]) <= hi]


def _end_like(model, steps, t_edit):
    """An end_percent whose window [0, end] holds exactly the grid steps t ≥ t_edit."""
    ms = model.get_model_object("model_sampling")
    lowest = min(t for t in EditSchedule(steps).timesteps() if t >= t_edit)
    end = next(p / 1000 for p in range(1001) if float(ms.percent_to_sigma(p / 1000)) <= float(ms.sigmas[lowest]))
    assert _grid_inside(model, steps, 0.0, end) == [t for t in EditSchedule(steps).timesteps() if t >= t_edit]
    return end


def _explore(nodes, model, x_T, direction, **window):
    from harness.tiny_sdxl import tiny_vae

    positive, _ = conditioning()
    return nodes.discovery.DirectionExplorer.execute(
        model=model, x_T={"samples": x_T}, vae=tiny_vae(), strengths="-1, 1", steps=6, t_edit=400, scale=1, seed=0,
        cfg=1.0, edit_branches="cond", positive=positive, direction=direction, **window).result[0]


def test_the_direction_explorer_takes_a_percent_window(pack, layer, monkeypatch):
    nodes, _ = layer
    model, x_T, direction = _edit_inputs()
    with torch.inference_mode():
        by_t = _explore(nodes, model, x_T, direction)
        same = _explore(nodes, model, x_T, direction, window="percent", end_percent=_end_like(model, 6, 400))
        seen = edited_steps(monkeypatch, pack)
        narrow = _explore(nodes, model, x_T, direction, window="percent", start_percent=0.3, end_percent=0.8)
        swept = _explore(nodes, model, x_T, direction, window="percent", start_percent=0.3, end_percent=0.8,
                         t_edit_sweep="400")  # the sweep is in t: it replaces the percent window
        swept_by_t = _explore(nodes, model, x_T, direction, t_edit_sweep="400")
    assert torch.equal(by_t, same) and not torch.equal(by_t, narrow) and torch.equal(swept, swept_by_t)
    assert seen[:6] == [(t, t in _grid_inside(model, 6, 0.3, 0.8)) for t in EditSchedule(6).timesteps()], seen


def _features(nodes, model, latent, **window):
    inputs = dict(model=model, latent={"samples": latent}, role="style (K, V)", attention_layers="custom",
                  custom_layers="all", t_start=999, t_stop=0, steps=6, positive=conditioning()[0])
    return nodes.styleid.StyleIDFeatures.execute(**{**inputs, **window}).result


def test_styleid_features_take_the_kv_window_as_percent(pack, layer):
    nodes, _ = layer
    model = tiny_sd()
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(8)) * 0.5
    inside = _grid_inside(model, 6, 0.2, 0.7)
    assert 0 < len(inside) < 6
    with torch.inference_mode():
        by_percent = _features(nodes, model, latent, window="percent", start_percent=0.2, end_percent=0.7)[1]
        by_t = _features(nodes, model, latent, t_start=max(inside), t_stop=min(inside))[1]
    assert by_percent.timesteps == tuple(inside) == by_t.timesteps
    with torch.inference_mode():
        x_T, _, trajectory, _ = _features(nodes, model, latent, keep_h_from_t=500)
    assert origin_of(x_T).made_with == "6 steps, t = 999 … 0"  # the x_T records its inversion's grid
    assert trajectory.made_with == "6 steps, t = 999 … 0, h kept for t ≥ 500" and trajectory.timesteps == (999, 799, 599)
    assert all(torch.equal(by_percent.tensors[k], by_t.tensors[k]) for k in by_t.tensors)


def _inject(nodes, model, x_T, features, trajectory, **window):
    return nodes.styleid.StyleIDInject.execute(
        model=model, content_x_T=x_T, style_x_T=x_T, style_features=features, gamma=0.0, tau=1.5,
        attention_layers="custom", custom_layers="all", steps=6, start="adain", content_h=trajectory, gamma_h=0.7,
        positive=conditioning()[0], **window).result[0]["samples"]


def test_styleid_inject_takes_its_kv_and_h_windows_as_percent(pack, layer):
    nodes, _ = layer
    model = tiny_sd()
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(8)) * 0.5
    kv = _grid_inside(model, 6, 0.2, 0.7)
    end = _end_like(model, 6, 400)
    with torch.inference_mode():
        x_T, features, trajectory, _ = _features(nodes, model, latent)
        by_t = _inject(nodes, model, x_T, features, trajectory, t_start=max(kv), t_stop=min(kv), t_edit=400)
        percent = dict(window="percent", start_percent=0.2, end_percent=0.7, t_start=999, t_stop=0, t_edit=0)
        by_percent = _inject(nodes, model, x_T, features, trajectory, h_end_percent=end, **percent)
        shorter = _inject(nodes, model, x_T, features, trajectory, h_end_percent=0.2, **percent)
    assert torch.equal(by_t, by_percent) and not torch.equal(by_t, shorter)


def test_clip_training_takes_a_percent_window(pack, layer, monkeypatch):
    from harness.tiny import tiny_clip
    from harness.tiny_sdxl import tiny_vae

    nodes, _ = layer
    monkeypatch.setattr(nodes.clip_training, "clip_scorer", lambda *_: tiny_clip())
    model = tiny_sd()
    images = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(9))
    positive, _ = conditioning()

    def train(**window):
        inputs = dict(model=model, images=images, vae=tiny_vae(), source_text="a photo", target_text="a red photo",
                      form="per_timestep", epochs=1, lr=0.5, steps=6, t_edit=400, inversion_steps=6, batch_size=1,
                      clip_weight=1.0, recon_weight=3.0, lr_step_epochs=3, lr_gamma=0.1,
                      clip_reference="source_prediction", log_clip_loss=True, init_scale=0.2, clip_model="tiny",
                      clip_pretrained="", seed=0, cfg=1.0, edit_branches="cond", positive=positive)
        return nodes.clip_training.TrainAsyrpDirection.execute(**{**inputs, **window}).result

    by_t, t_edit, _ = train()
    same, same_t_edit, _ = train(window="percent", end_percent=_end_like(model, 6, 400), t_edit=-1)
    inside = _grid_inside(model, 6, 0.3, 0.8)
    narrow, narrow_t_edit, _ = train(window="percent", start_percent=0.3, end_percent=0.8)
    assert by_t.timesteps == same.timesteps and torch.equal(by_t.delta, same.delta)
    assert (t_edit, same_t_edit) == (400, 599)  # a percent window reports its lowest step (grid 999, 799, 599, …)
    assert narrow.timesteps == tuple(inside) and narrow_t_edit == min(inside) and max(inside) < 999
    # the record: the window each was trained with
    assert by_t.made_with == "t_edit=400, trained on 6 steps"
    assert narrow.made_with == "percent 0.30–0.80, trained on 6 steps"


# --- records: directions, trajectories and x_T say which window / grid they were made with (``made_with``) ---

def _trajectory(timesteps, seed=0, **record):
    from hspace_core import HTrajectory

    h = torch.randn(len(timesteps), 2, 4, 2, 2, generator=torch.Generator().manual_seed(seed))
    return HTrajectory(tuple(timesteps), h, fingerprint="arch/w", **record)


def test_made_with_round_trips_through_the_files_and_old_files_still_load(tmp_path):
    from hspace_core import HTrajectory
    from hspace_core.file_format import save_tensors

    trajectory = _trajectory((999, 499, 0), made_with="3 steps, t = 999 … 0, σ = 14.6 … 0.03")
    trajectory.save(str(tmp_path / "t.safetensors"))
    assert HTrajectory.load(str(tmp_path / "t.safetensors")).made_with == trajectory.made_with
    direction = Direction("global", torch.ones(4, 2, 2), fingerprint="arch/w", made_with="percent 0.00–0.60")
    direction.save(str(tmp_path / "d.safetensors"))
    assert Direction.load(str(tmp_path / "d.safetensors")).made_with == "percent 0.00–0.60"
    # files of older versions have no record: a trajectory's is then its own grid, a direction's stays unknown
    save_tensors(str(tmp_path / "old_t.safetensors"), {"h": trajectory.h}, "h_trajectory", timesteps=[999, 499, 0],
                 branches=["single"], fingerprint="arch/w", source="inversion")
    save_tensors(str(tmp_path / "old_d.safetensors"), {"delta": direction.delta}, "direction", form="global",
                 timesteps=[], fingerprint="arch/w")
    assert HTrajectory.load(str(tmp_path / "old_t.safetensors")).made_with == "3 steps, t = 999 … 0"
    assert Direction.load(str(tmp_path / "old_d.safetensors")).made_with == ""


def test_directions_from_trajectories_carry_their_record():
    from hspace_core import HStorage, combine, direction_from_examples, pca_directions, probe_direction

    kept = HStorage(t_min=400)
    grid = (999, 749, 499, 249, 0)
    hs = [torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(t)) for t in grid if t >= 400]
    positive = kept.trajectory(grid, hs, ("single",), "arch/w", "inversion")
    negative = kept.trajectory(grid, [h + 1 for h in hs], ("single",), "arch/w", "inversion")
    assert positive.made_with == "5 steps, t = 999 … 0, h kept for t ≥ 400" and positive.timesteps == (999, 749, 499)
    d = direction_from_examples(positive, negative, name="x")
    assert d.made_with == positive.made_with == d.global_mean().made_with
    assert probe_direction(positive, negative, "mean_difference").made_with == positive.made_with
    assert pca_directions(positive, 1)[0].made_with == positive.made_with
    other = Direction("global", torch.ones(4, 2, 2), made_with="t_edit=400, trained on 40 steps")
    assert combine([d.global_mean(), other], [1, 1]).made_with == f"{positive.made_with} + {other.made_with}"
    assert combine([other, other], [1, 1]).made_with == other.made_with
