"""Directions nobody had to label, and probe directions, measured on the bundled demo model.

    python -m benchmarks.discovery [--images 256] [--test 16] [--steps 10] [--site middle] [--out docs/discovery.md]

``--site`` reads and edits h at another block (``hspace_core.sites``); per-site swap and injection numbers are
``benchmarks.sites``.

1. Speed: DDIM inversion + PCA over ``--images`` generated-dataset images; 8 Jacobian directions for one image.
2. Disentanglement: the top 8 PCA directions (pooled over t, per-position normalisation) and the top 8 Jacobian
   directions (one image, t ≈ 500), all rescaled to the same ‖Δh‖ (the mean of the PCA directions' one-σ lengths),
   applied with Asyrp's edit (t_edit = 400) to ``--test`` other images at strengths ±1, ±2.  Each factor's change is
   standardised by its spread over the test images' reconstructions (size √area, x and y of the foreground centroid,
   foreground and background colour); a shape-type change counts 1.  The table gives the factor with the largest
   share of the total standardised change, and that share.
3. Supervised circle-vs-square: mean difference, logistic probe and linear SVM (global, pooled over t) from 32 + 32
   centred examples, rescaled to the mean difference's ‖Δh‖, applied to 16 other centred squares: share that
   becomes a circle, share unchanged, median foreground colour shift.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import hspace_core as hs
from harness.inprocess import node_module
from hspace_core.sites import SITES
from hspace_demo import readouts as ro
from hspace_demo.measure import centred_examples, shape_direction_effect, size_direction_effect
from hspace_demo.run import load_model
from hspace_demo.shapes import make_batch

FACTORS = ("type", "size", "x", "y", "fg colour", "bg colour")
STRENGTHS = (-2.0, -1.0, 1.0, 2.0)
NOTES = "\n---\n\n*Notes"  # --out keeps what follows this in the file (written by hand)


def factors_of(img) -> dict:
    """Read-outs of one image: shape type index, √area, centroid x/y, foreground and mean background colours."""
    mask = ro.foreground_mask(img)
    ys, xs = np.nonzero(mask) if mask.any() else (np.array([16.0]), np.array([16.0]))
    return {"type": ro.classify_shape(img)[0], "size": float(np.sqrt(mask.sum())), "x": float(xs.mean()),
            "y": float(ys.mean()), "fg colour": ro.foreground_colour(img), "bg colour": ro.mean_background(img)}


def spreads(base: list[dict]) -> dict:
    """Standard deviation of each continuous factor over images (RMS over channels for colours)."""
    out = {}
    for f in FACTORS[1:]:
        values = np.array([b[f] for b in base], dtype=float)
        out[f] = float(np.sqrt(np.nanvar(values, axis=0).sum())) or 1.0
    return out


def image_change(b: dict, e: dict, spread: dict) -> dict:
    """One image's standardised change of each factor (type: 1 if its type changed)."""
    change = {"type": float(b["type"] != e["type"])}
    for f in FACTORS[1:]:
        change[f] = float(np.linalg.norm(np.atleast_1d(np.asarray(e[f]) - np.asarray(b[f]))) / spread[f])
    return change


def standardised_change(base: list[dict], edited: list[dict], spread: dict) -> dict:
    """Mean over images of each factor's standardised change (type: share of images whose type changed)."""
    per_image = [image_change(b, e, spread) for b, e in zip(base, edited)]
    return {f: float(np.nanmean([c[f] for c in per_image])) for f in FACTORS}


def top_factor(change: dict) -> tuple[str, float]:
    """The factor with the largest standardised change, and the total change (NaN factors left out)."""
    finite = {f: v for f, v in change.items() if np.isfinite(v)}
    return max(finite, key=finite.get), float(sum(finite.values()))


def disentanglement(model, directions, x_T, base, spread, steps: int) -> list[dict]:
    rows = []
    schedule = hs.EditSchedule(steps, t_edit=400)
    for d in directions:
        row = {"name": d.name, "shares": {}, "totals": {}}
        for s in STRENGTHS:
            edited = [factors_of(e) for e in hs.edit(model, x_T, d, s, schedule).numpy()]
            change = standardised_change(base, edited, spread)
            total = sum(change.values())
            top = max(change, key=change.get)
            row["shares"][s] = (top, change[top] / total if total else float("nan"))
            row["totals"][s] = total
            row.setdefault("per_image", {})[s] = [top_factor(image_change(b, e, spread)) for b, e in zip(base, edited)]
        rows.append(row)
    return rows


def transfer(row: dict, strength: float, source: int = 0) -> tuple[str, float, float]:
    """How a direction found on image ``source`` transfers to the others at ``strength``: the factor it moves most
    on the source, the share of the other images whose largest mover is that factor, and the other images' mean
    total standardised change relative to the source's."""
    per_image = row["per_image"][strength]
    top, total = per_image[source]
    others = [p for i, p in enumerate(per_image) if i != source]
    same = float(np.mean([t == top for t, _ in others]))
    return top, same, float(np.mean([o for _, o in others]) / total) if total else float("nan")


def size_probes(model, steps: int, test: int) -> dict:
    """Small-vs-large: mean difference, logistic probe and SVM (global) from 32 + 32 paired centred examples
    (radius 10–11 vs 6–7, same types and colours), the probes rescaled to the mean difference's ‖Δh‖, applied to
    ``test`` held-out centred shapes of radius 7.5–9.5 at s = ±1, ±2: median area ratio, share moved the intended
    way, median foreground colour shift (``hspace_demo.measure.size_direction_effect``)."""
    pos, neg = (hs.invert(model, centred_examples(32, radius, 1605), steps).trajectory
                for radius in ((10.0, 11.0), (6.0, 7.0)))
    mean_diff = hs.probe_direction(pos, neg, "mean_difference", form="global", name="mean difference")
    held_out = centred_examples(test, (7.5, 9.5), 1606)
    out = {}
    for method in hs.PROBE_METHODS:
        d = hs.rescale_like(hs.probe_direction(pos, neg, method, form="global", name=method), mean_diff)
        cos = float(torch.nn.functional.cosine_similarity(d.delta.flatten(), mean_diff.delta.flatten(), dim=0))
        effect = size_direction_effect(model, d, held_out, (-2.0, -1.0, 1.0, 2.0), steps)
        out[method] = (effect, cos, d.metadata.get("train_accuracy", float("nan")))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--test", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--site", default="middle", choices=SITES)
    p.add_argument("--out", default="docs/discovery.md")
    p.add_argument("--figure", default="docs/figures/discovery_explorer.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, steps, timings = load_model().with_site(args.site), args.steps, {}
    with torch.no_grad():
        images = torch.from_numpy(make_batch(args.images, seed=1601)[0])
        t0 = time.time()
        trajectory = hs.invert(model, images, steps, report=False).trajectory
        timings[f"invert {args.images} images ({steps} steps)"] = time.time() - t0
    t0 = time.time()
    pca = hs.pca_directions(trajectory, 8, name="pca")
    timings[f"PCA over {args.images} images (k = 8, pooled over {steps} timesteps)"] = time.time() - t0
    one_sigma = float(np.mean([hs.relative_strength(d, trajectory).mean() for d in pca]))

    test = torch.from_numpy(make_batch(args.test, seed=1602)[0])
    with torch.no_grad():
        inv = hs.invert(model, test, steps)
    x_t, t_j = hs.latent_at(model, inv.x_T[:1], 500, steps)
    t0 = time.time()
    jac = hs.jacobian_directions(model, x_t, t_j, 8, name="jacobian")
    timings[f"8 Jacobian directions, one image, t = {t_j} (12 iterations, block 10)"] = time.time() - t0
    same = lambda ds: [hs.normalise(d, trajectory, one_sigma) for d in ds]
    base = [factors_of(b) for b in inv.reconstruction.numpy()]
    spread = spreads(base)
    with torch.no_grad():
        table = disentanglement(model, same(pca) + same(jac), inv.x_T, base, spread, steps)
        pca_explained = [d.metadata["explained_variance"] for d in pca]
        sigmas = [d.metadata["singular_value"] for d in jac]

        supervised = {}
        pos, neg = (hs.invert(model, centred_examples(32, (7.0, 10.0), 1603, s), steps).trajectory
                    for s in ("circle", "square"))
        mean_diff = hs.probe_direction(pos, neg, "mean_difference", form="global", name="mean difference")
        squares = centred_examples(args.test, (7.0, 10.0), 1604, "square")
        for method in hs.PROBE_METHODS:
            t0 = time.time()
            d = hs.probe_direction(pos, neg, method, form="global", name=method)
            fit = time.time() - t0
            d = hs.rescale_like(d, mean_diff)
            cos = float(torch.nn.functional.cosine_similarity(d.delta.flatten(), mean_diff.delta.flatten(), dim=0))
            effect = shape_direction_effect(model, d, squares, "circle", (1.0, 2.0, 3.0), steps)
            supervised[method] = (effect, cos, d.metadata.get("train_accuracy", float("nan")), fit)
        sizes = size_probes(model, steps, args.test)
        figure_rows = hs.explore(model, inv.x_T[:1], same(pca[:4]), [-2.0, -1.0, 0.0, 1.0, 2.0],
                                 hs.EditSchedule(steps, t_edit=400))
    if args.figure:
        tiles = ((figure_rows.permute(0, 1, 3, 4, 2) + 1) / 2).clamp(0, 1)
        image = node_module("nodes.layer.grids").grid_image(tiles, [d.name for d in pca[:4]], ["-2", "-1", "0", "+1", "+2"], scale=3)
        from PIL import Image

        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(args.figure)
    write(args, table, supervised, sizes, timings, pca_explained, sigmas, one_sigma, spread)


def write(args, table, supervised, sizes, timings, explained, sigmas, one_sigma, spread):
    site = "" if args.site == "middle" else f" --site {args.site}"
    lines = [f"Generated by `python -m benchmarks.discovery --images {args.images} --test {args.test} --steps "
             f"{args.steps}{site}` on the bundled model (CPU, one thread). Protocol: see the script's docstring.", "",
             "## Speed", "", "| what | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", "## Disentanglement of the top 8 PCA and top 8 Jacobian directions", "",
              f"All directions rescaled to ‖Δh‖ = {one_sigma:.3f}·mean‖h‖ (the PCA directions' mean one-σ length). "
              f"Factor spreads over the test reconstructions: " + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()) +
              " (size, x, y in pixels; colours in [0, 1] RGB units). Each cell: the factor with the largest share of "
              "the total standardised change, its share, and the total (in σ units).", "",
              "| direction | extra | " + " | ".join(f"s = {s:+g}" for s in STRENGTHS) + " |",
              "|---|---|" + "---|" * len(STRENGTHS)]
    extras = [f"explained {e:.3f}" for e in explained] + [f"σ = {s:.4f}" for s in sigmas]
    for row, extra in zip(table, extras):
        cells = [f"{row['shares'][s][0]} {100 * row['shares'][s][1]:.0f} % ({row['totals'][s]:.2f})" for s in STRENGTHS]
        lines.append(f"| {row['name']} | {extra} | " + " | ".join(cells) + " |")
    one_factor = [r["name"] for r in table if r["name"].startswith("pca")
                  and max(r["shares"][s][1] for s in STRENGTHS) >= 0.6]
    lines += ["", f"PCA directions with one factor taking ≥ 60 % of the standardised change at some strength: "
              f"{len(one_factor)} of 8 ({', '.join(one_factor) or 'none'}).", "",
              "## Supervised circle-vs-square (square → circle on 16 held-out centred squares)", "",
              "All three rescaled to the mean difference's ‖Δh‖.", "",
              "| method | cos with mean diff. | train acc. | fit s | s | becomes circle | unchanged | fg colour shift |",
              "|---|---|---|---|---|---|---|---|"]
    for method, (effect, cos, acc, fit) in supervised.items():
        for s, e in effect.items():
            lines.append(f"| {method} | {cos:.3f} | {acc:.2f} | {fit:.1f} | {s:g} | {100 * e['is_target']:.0f} % | "
                         f"{100 * e['unchanged']:.0f} % | {e['fg_colour_shift']:.3f} |")
    lines += ["", f"## Supervised small-vs-large (on {args.test} held-out centred shapes, radius 7.5–9.5)", "",
              "All three rescaled to the mean difference's ‖Δh‖; protocol in `size_probes`.", "",
              "| method | cos with mean diff. | train acc. | s | median area ratio | moved the intended way | "
              "fg colour shift |", "|---|---|---|---|---|---|---|"]
    for method, (effect, cos, acc) in sizes.items():
        for s, e in effect.items():
            lines.append(f"| {method} | {cos:.3f} | {acc:.2f} | {s:+g} | {e['area_ratio']:.2f} | "
                         f"{100 * e['moved_intended_way']:.0f} % | {e['fg_colour_shift']:.3f} |")
    lines += ["", "## Jacobian directions transferred to other images", "",
              f"Found on test image 0, applied at s = +2 to all {args.test}: the factor each moves most on image 0, the "
              "share of the other images whose largest mover is that factor, and their mean total standardised change "
              "relative to image 0's.", "", "| direction | top factor on image 0 | same top factor elsewhere | "
              "change elsewhere / on image 0 |", "|---|---|---|---|"]
    for row in table:
        if row["name"].startswith("jacobian"):
            top, same, ratio = transfer(row, 2.0)
            lines.append(f"| {row['name']} | {top} | {100 * same:.0f} % | {ratio:.2f} |")
    notes = ""
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = f.read()
        notes = old[old.index(NOTES):] if NOTES in old else ""
    with open(args.out, "w") as f:
        f.write("# Discovered and probe directions on the bundled model\n\n" + "\n".join(lines) + "\n" + notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
