"""Directions nobody had to label (PCA, Jacobian), probe directions, orthogonalisation and the Direction Explorer."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..hspace_core import (NORMALISATIONS, PROBE_METHODS, explore, explorer_rows, jacobian_directions, latent_at,
                           orthogonalise, pca_directions, probe_direction, rescale_like, row_edit)
from ..hspace_core.explorer import check_one_x_T
from ..hspace_core.sites import common_site
from .comfy.memory import rows_run
from .comfy.checks import is_flow_transformer
from .comfy.model import ComfyHSpaceModel
from .comfy.run import latent_out, run_in_comfy, sweep_process
from .comfy.samplers import h_edit_sampler
from .comfy.progress import progress_bar
from .layer import (CATEGORY, EXPLORER_STRENGTHS, T_EDITS, DirectionSet, DirectionType, HSpaceNode, Trajectory,
                    advanced, allow_other_model_input, check_work, conditioning_inputs, decode, edit_schedule,
                    edit_window, model_input, node_name, sampling_inputs, seed_input, site_input, steps_input,
                    t_edit_input, t_widget_timestep, values_input, values_of, window_inputs, x_T_input)
from .layer import grids

log = logging.getLogger("hspace")

CAT = f"{CATEGORY}/discover"
# Work bounds (docs/hardening.md): PCA's cost grows with k × images, the Jacobian's with k × iterations (each
# iteration is k + 2 jvp and vjp through the decoder), the explorer's with its tiles (one edit each).
PCA_WORK = 16384
JACOBIAN_WORK = 512
EXPLORER_TILES = 256


def _component_input():
    return io.Int.Input("component", default=0, min=0, max=63,
                        tooltip="Which of the k directions the 'direction' output holds (0 = the leading one).")


def _set_outputs(kind: str):
    return [DirectionSet.Output("directions", tooltip=f"All k {kind} directions, for the Direction Explorer."),
            DirectionType.Output("direction", tooltip="The direction chosen by 'component' (for H-Space Asyrp Edit, Save, …)."),
            io.String.Output("info", tooltip="One line per direction: its metadata.")]


def _pick(directions, component: int, info_key: str) -> io.NodeOutput:
    if component >= len(directions):
        raise ValueError(f"component {component} is past the {len(directions)} directions made: set component below "
                         f"{len(directions)} or raise k.")
    info = "\n".join(f"{d.name}: {info_key} {d.metadata[info_key]:.4g}" for d in directions)
    return io.NodeOutput(tuple(directions), directions[component], info, ui={"text": [info]})


class PCADirections(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpacePCADirections", display_name="H-Space PCA Directions", category=CAT,
            description="Unsupervised directions (Haas et al. 2023): the top k principal components of h over the "
                        "images of a trajectory batch (invert or capture many images), after per-position "
                        "normalisation. Strength 1 = one standard deviation of h along the component.",
            inputs=[Trajectory.Input("trajectory", tooltip="h trajectories of many images (a batch; 2 or more)."),
                    io.Int.Input("k", default=4, min=1, max=64,
                                 tooltip=f"How many leading components (k × images at most {PCA_WORK})."),
                    _component_input(),
                    io.Combo.Input("form", options=["global", "per_timestep"], default="global",
                                   tooltip="global: PCA pooled over timesteps, one Δh; per_timestep: one PCA per t."),
                    advanced(io.Combo.Input("normalisation", options=list(NORMALISATIONS), default="position",
                                            tooltip="position: each spatial position weighs the same (tames high-norm "
                                                    "outlier positions); standardise: z-score every coordinate.")),
                    io.String.Input("name", default="pca", tooltip="Label prefix of the directions.")],
            outputs=_set_outputs("principal"),
        )

    @classmethod
    def execute(cls, trajectory, k, component, form, normalisation, name) -> io.NodeOutput:
        check_work("k × images", k * trajectory.batch_size, PCA_WORK, "lower k or use fewer images")
        directions = pca_directions(trajectory, k, form=form, normalisation=normalisation, name=name)
        return _pick(directions, component, "explained_variance")


class JacobianDirections(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceJacobianDirections", display_name="H-Space Jacobian Directions", category=CAT,
            description="Unsupervised directions for one image (after Park et al. 2023): the top k right-singular "
                        "vectors of the Jacobian of the U-Net's output with respect to h at one timestep, by "
                        "subspace iteration (the Jacobian is never built). The directions the output is most "
                        "sensitive to; also usable on other images.",
            inputs=[model_input(),
                    x_T_input(tooltip="One inverted x_T (batch of 1; use Latent From Batch to pick one)."),
                    steps_input(20),
                    io.Int.Input("t", default=500, min=0, max=999,
                                 tooltip="Timestep of the Jacobian (the nearest one on the steps grid is used). On "
                                         "Flux (a 10000-entry σ table) it names the entry at the same fraction of "
                                         "the table (≈ 10·t; 999 = the noise, σ = 1), as every t widget does."),
                    io.Int.Input("k", default=4, min=1, max=64,
                                 tooltip=f"How many singular directions (k × iterations at most {JACOBIAN_WORK})."),
                    _component_input(),
                    io.Combo.Input("output", options=["eps", "x0"], default="eps",
                                   tooltip="Differentiate ε or the predicted x0 (same directions, scaled σ). On a "
                                           "flow model at σ = 1 (t = 999) only x0 depends on h."),
                    io.Float.Input("relative_norm", default=0.1, min=0.001, max=10.0, step=0.01,
                                   tooltip="‖Δh‖ of each direction as a share of ‖h_t‖ of this image."),
                    advanced(io.Int.Input("iterations", default=12, min=1, max=200,
                                          tooltip="Subspace iterations (more = closer to the exact singular vectors).")),
                    seed_input(),
                    *conditioning_inputs(), site_input()],
            outputs=_set_outputs("Jacobian"),
        )

    @classmethod
    def execute(cls, model, x_T, steps, t, k, component, output, relative_norm, iterations, seed, cfg, edit_branches,
                positive=None, negative=None, site="middle") -> io.NodeOutput:
        check_work("k × iterations", k * iterations, JACOBIAN_WORK, "lower k or iterations")
        negative, negative_at = sampling_inputs(x_T, cfg, positive, negative)
        at = t_widget_timestep(t, model, node_name(cls.define_schema()))

        def body(m, x):
            x_t, t_grid = latent_at(m, x, at, steps, progress=progress_bar(steps, model))
            return jacobian_directions(m, x_t, t_grid, k, output=output, iterations=iterations,
                                       relative_norm=relative_norm, seed=seed, progress=progress_bar(iterations + 1))

        directions = run_in_comfy(model, x_T["samples"], body, positive=positive, negative=negative, cfg=cfg,
                                  edit_branches=edit_branches, negative_at=negative_at, site=site, steps=steps,
                                  rows=rows_run(model, x_T["samples"].shape[0], copies=k + 2))  # k + oversample probe rows
        return _pick(directions, component, "singular_value")


class ProbeDirection(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceProbeDirection", display_name="H-Space Probe Direction", category=CAT,
            description="A direction from labelled examples: the normal of a linear classifier of h (logistic "
                        "regression, or a linear SVM as in BoundaryDiffusion) separating positives from negatives, "
                        "as long as the mean difference along it; or the plain mean difference.",
            inputs=[Trajectory.Input("positive", tooltip="Trajectory of images that have the attribute (a batch)."),
                    Trajectory.Input("negative", tooltip="Trajectory of images that lack it."),
                    io.Combo.Input("method", options=list(PROBE_METHODS), default="logistic",
                                   tooltip="logistic regression, L2-loss linear SVM, or the mean difference."),
                    io.Combo.Input("form", options=["per_timestep", "global"], default="per_timestep",
                                   tooltip="One probe per timestep, or one pooled over timesteps."),
                    advanced(io.Float.Input("l2", default=0.001, min=0.0, max=10.0, step=0.0001,
                                            tooltip="L2 penalty of the probe's weights.")),
                    io.String.Input("name", default="probe", tooltip="A label stored with the direction.")],
            outputs=[DirectionType.Output("direction", tooltip="The probe's direction (toward the positives)."),
                     io.String.Output("info", tooltip="Method and training accuracy.")],
        )

    @classmethod
    def execute(cls, positive, negative, method, form, l2, name) -> io.NodeOutput:
        d = probe_direction(positive, negative, method, form=form, l2=l2, name=name)
        info = f"{method}: training accuracy {d.metadata.get('train_accuracy', float('nan')):.3f}"
        return io.NodeOutput(d, info, ui={"text": [info]})


class OrthogonaliseDirection(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceOrthogonaliseDirection", display_name="H-Space Orthogonalise Direction", category=CAT,
            description="Remove from a direction its projection on other directions (Gram–Schmidt), e.g. take a "
                        "correlated attribute out of it; the result is exactly orthogonal to them.",
            inputs=[DirectionType.Input("direction", tooltip="The direction to clean."),
                    DirectionType.Input("against", tooltip="A direction to remove from it."),
                    DirectionType.Input("against_2", optional=True, tooltip="Another direction to remove."),
                    DirectionSet.Input("against_set", optional=True, tooltip="A set of directions to remove (PCA, Jacobian)."),
                    io.Boolean.Input("keep_norm", default=False,
                                     tooltip="Rescale the result to the original direction's ‖Δh‖ (else keep what is left).")],
            outputs=[DirectionType.Output("orthogonal", tooltip="The direction, orthogonal to the others.")],
        )

    @classmethod
    def execute(cls, direction, against, keep_norm, against_2=None, against_set=None) -> io.NodeOutput:
        others = [against, *([against_2] if against_2 is not None else []), *(against_set or ())]
        result = orthogonalise(direction, others)
        if keep_norm:
            result = rescale_like(result, direction)
        return io.NodeOutput(result)


class DirectionExplorer(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceDirectionExplorer", display_name="H-Space Direction Explorer", category=CAT,
            description="One labelled grid of what each direction does to one image: rows = directions (or, with a "
                        "t_edit sweep, one row per direction and t_edit), columns = strengths (Asyrp edits of x_T, "
                        "decoded by the VAE). h is read at the directions' site.",
            inputs=[model_input(),
                    x_T_input(tooltip="One inverted x_T (batch of 1; use Latent From Batch to pick one)."),
                    io.Vae.Input("vae", tooltip="The VAE to decode with ('pixel_space' for pixel U-Nets)."),
                    DirectionSet.Input("directions", optional=True, tooltip="Directions from PCA / Jacobian Directions."),
                    DirectionType.Input("direction", optional=True, tooltip="One more direction (a row after the set)."),
                    values_input("strengths", EXPLORER_STRENGTHS, "Comma-separated strengths: the columns",
                                 default="-2, -1, 0, 1, 2", optional=False),
                    steps_input(20), t_edit_input(),
                    io.Int.Input("scale", default=4, min=1, max=16, tooltip="Tile upscaling (nearest) for small images."),
                    seed_input(),
                    *conditioning_inputs(),
                    values_input("t_edit_sweep", T_EDITS,
                                 "Comma-separated t_edit values (e.g. 600, 400, 200): one row per direction and "
                                 f"t_edit, labelled 'name @ t≥t_edit'. Overrides t_edit (and a percent window: the "
                                 f"sweep is in the paper's t) when not empty; on Flux each value names the entry at "
                                 f"its fraction of the σ table, as t_edit does. At most {EXPLORER_TILES} tiles (rows "
                                 f"× strengths)"),
                    allow_other_model_input(),
                    *window_inputs()],
            outputs=[io.Image.Output("grid", tooltip="The labelled grid (one image).")],
        )

    @classmethod
    def execute(cls, model, x_T, vae, strengths, steps, t_edit, scale, seed, cfg, edit_branches, directions=None,
                direction=None, positive=None, negative=None, t_edit_sweep="", allow_other_model=False,
                window="t_edit", start_percent=0.0, end_percent=0.6) -> io.NodeOutput:
        chosen = [*(directions or ()), *([direction] if direction is not None else [])]
        if not chosen:
            raise ValueError("Connect a direction set ('directions') or a 'direction' to explore.")
        values = values_of(strengths, "strengths", EXPLORER_STRENGTHS)
        t_edits = values_of(t_edit_sweep, "t_edit_sweep", T_EDITS)
        flow = is_flow_transformer(model)
        if t_edits and window == "percent":
            log.info("h-space: the Direction Explorer's t_edit_sweep is in t; it replaces the percent window.")
        schedule = None if flow else edit_schedule(steps, t_edit, None, model, window if not t_edits else "t_edit",
                                                   start_percent, end_percent)  # a flow model's: the sampler checks
        rows = explorer_rows(chosen, t_edits)
        check_work("tiles (rows × strengths)", len(rows) * len(values), EXPLORER_TILES,
                   "use fewer directions, t_edit values or strengths")
        negative, negative_at = sampling_inputs(x_T, cfg, positive, negative)
        site = common_site(chosen, "directions")
        if flow:
            latent = _explore_flow(cls, model, x_T, rows, values, steps, t_edit, seed, cfg, edit_branches, site,
                                   positive, negative, negative_at, window, start_percent, end_percent)
        else:
            progress = progress_bar(steps * len(rows), model)
            out = run_in_comfy(model, x_T["samples"],
                               lambda m, x: explore(m, x, chosen, values, schedule, t_edits=t_edits, seed=seed,
                                                    progress=progress),
                               positive=positive, negative=negative, cfg=cfg, edit_branches=edit_branches, seed=seed,
                               negative_at=negative_at, site=site, steps=steps,
                               rows=rows_run(model, x_T["samples"].shape[0], copies=len(values), edited=True))
            latent = latent_out(model, out.flatten(0, 1))
        images = decode(vae, latent)
        tiles = images.reshape(len(rows), len(values), *images.shape[1:])[..., :3]
        labels = [label for _, _, label in rows]
        return io.NodeOutput(grids.grid_image(tiles.float().cpu(), labels, [f"{s:+g}" for s in values], scale=scale))


def _explore_flow(node_cls, model, x_T, rows, strengths, steps, t_edit, seed, cfg, edit_branches, site,
                  positive, negative, negative_at, window, start_percent, end_percent) -> dict:
    """The explorer on a flow transformer: each row (``explorer_rows``: a direction, with a t_edit of the sweep or
    None for the node's window) is one Asyrp process of the strengths as a batch (``row_edit``), the H-Space Asyrp
    Edit's KSAMPLER (``h_edit_sampler``) over ComfyUI's sampling of the DDIM grid of ``steps`` on the model's own σ
    table (``sweep_process``, started at σ = 1 from x_T); the LATENT of the rows, row-major.  A swept t_edit is a
    t widget value, read as the Asyrp Edit's t_edit (``edit_window``: the entry at its fraction of the table)."""
    node = node_name(node_cls.define_schema())
    samples = x_T["samples"]
    check_one_x_T(samples)
    batch = {**x_T, "samples": samples.expand(len(strengths), *samples.shape[1:])}
    scale = torch.tensor(strengths, dtype=torch.float32)

    def sampler(row):
        direction, swept, _ = row
        by, t = (window, t_edit) if swept is None else ("t_edit", swept)
        return h_edit_sampler(node, lambda n, hs, window_ts: row_edit(direction, scale, n),
                              lambda patcher: edit_window(node, patcher, by, t, start_percent, end_percent),
                              edit_branches=edit_branches, site=site, seed=seed,
                              hs_for=ComfyHSpaceModel.for_node(cfg, negative, negative_at), reserved=True)

    return {"samples": sweep_process(model, batch, sampler, rows, steps, site=site, positive=positive,
                                     negative=negative, cfg=cfg, seed=seed)}
