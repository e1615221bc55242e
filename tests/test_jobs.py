"""Batch jobs on one machine (hspace_core.jobs, docs/batch.md): shards equal the library's per-image results bit
for bit, an interrupted job resumes, merged PCA statistics equal one pass, bad images are listed and skipped."""
import json
import os
import subprocess
import sys

import pytest
import torch

import hspace_core as hs
from hspace_core.jobs import HMoments, JobSpec, merge_all, run_job
from hspace_core.jobs import cli
from hspace_core.jobs.runner import ShardRunner

from jobs_helpers import (BUNDLED, ROOT, STEPS, bundled, library_edit, library_inversion, shape_folder, shard_tensors,
                          spec)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return shape_folder(str(tmp_path_factory.mktemp("shapes")), 10)


def random_trajectory(images=12, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(1, 1, 8, 4, 4, generator=g) * 3
    h = torch.randn(steps, images, 8, 4, 4, generator=g) * scale + torch.randn(steps, 1, 8, 4, 4, generator=g)
    return hs.HTrajectory(tuple(range(999, -1, -200))[:steps], h, fingerprint="arch/weights")


@pytest.mark.parametrize("normalisation", ["position", "standardise", "none"])
def test_merged_statistics_of_three_shards_equal_one_pass_and_pca(normalisation):
    trajectory = random_trajectory()
    one = HMoments.of(trajectory)
    merged = merge_all(HMoments.of(trajectory.select(range(a, b))) for a, b in ((0, 3), (3, 8), (8, 12)))
    assert merged.count == 12
    # Chan's update against the direct sums, in float64: equal to round-off of the scatter's size (~1e3)
    assert torch.allclose(merged.mean, one.mean, rtol=0, atol=1e-12)
    assert torch.allclose(merged.scatter, one.scatter, rtol=0, atol=1e-10)
    reference = hs.pca_directions(trajectory, 3, normalisation=normalisation)
    got = merged.directions(3, normalisation=normalisation)
    for a, b in zip(got, reference):
        # eigh of the scaled scatter vs pca.py's SVD of the scaled rows, float64 then float32: measured identical
        assert (a.delta - b.delta).abs().max() <= 1e-6 * b.delta.abs().max()
        assert a.metadata == pytest.approx(b.metadata) and (a.site, a.fingerprint) == (b.site, b.fingerprint)


def low_rank_trajectory(images, steps=5, shape=(16, 8, 8), scales=(10, 6, 4, 2, 1, 0.5), noise=0.05, seed=0):
    """h = a timestep mean + a few strong directions + a full-rank noise floor (its rank exceeds a sketch's)."""
    g = torch.Generator().manual_seed(seed)
    features = shape[0] * shape[1] * shape[2]
    basis = torch.linalg.qr(torch.randn(features, len(scales), generator=g))[0].T
    h = (torch.randn(steps, images, len(scales), generator=g) * torch.tensor(scales)) @ basis
    h = h + noise * torch.randn(steps, images, features, generator=g) + torch.randn(steps, 1, features, generator=g)
    return hs.HTrajectory(tuple(range(999, -1, -200))[:steps], h.reshape(steps, images, *shape), fingerprint="a/w")


def _cosines(got, reference):
    return [abs(float(a.delta.flatten() @ b.delta.flatten() / a.delta.norm() / b.delta.norm()))
            for a, b in zip(got, reference)]


@pytest.mark.parametrize("normalisation", ["position", "standardise", "none"])
def test_a_sketch_of_the_scatter_merges_exactly_and_finds_the_exact_directions(normalisation):
    """h too large for a D×D scatter keep S·Ω: 3 shards merge into the one-pass sketch (float64 round-off), and on
    200 rows of 1024 features (a noise floor of rank > 64 columns) the Nyström directions are the exact scatter's:
    measured |cos| ≥ 0.99998 and explained variance ≥ 0.991 of the exact (Nyström underestimates, Tropp et al.)
    over 5 seeds; compared up to sign, which fix_signs may tip on a perturbed axis."""
    trajectory = low_rank_trajectory(40)
    one = HMoments.of(trajectory, sketch=True)
    merged = merge_all(HMoments.of(trajectory.select(range(a, b)), sketch=True) for a, b in ((0, 7), (7, 23), (23, 40)))
    assert merged.scatter is None and merged.sketch.shape == (1024, 64)
    assert (merged.sketch - one.sketch).abs().max() <= 1e-12 * one.sketch.abs().max()
    assert (merged.diagonal - one.diagonal).abs().max() <= 1e-12 * one.diagonal.abs().max()
    exact = HMoments.of(trajectory).directions(4, normalisation=normalisation)
    got = merged.directions(4, normalisation=normalisation)
    assert min(_cosines(got, exact)) > 0.9999
    for a, b in zip(got, exact):
        assert 0.98 < a.metadata["explained_variance"] / b.metadata["explained_variance"] < 1.001
        assert a.metadata["sketch_columns"] == 64 and (a.site, a.fingerprint) == (b.site, b.fingerprint)


def test_h_larger_than_the_exact_limit_is_sketched_and_equals_pca_where_the_sketch_holds_its_rank(tmp_path):
    """Above MAX_FEATURES (a 256² pixel U-Net's middle h is 32768) a shard keeps the sketch; with fewer rows than
    sketch columns the Nyström approximation is the scatter itself, so the directions are pca_directions' (1e-5)."""
    from hspace_core.jobs.moments import MAX_FEATURES

    trajectory = low_rank_trajectory(12, steps=2, shape=(64, 16, 17))
    assert trajectory.h[0, 0].numel() > MAX_FEATURES
    moments = merge_all(HMoments.of(trajectory.select(range(a, b))) for a, b in ((0, 5), (5, 12)))
    assert moments.sketched
    got, reference = moments.directions(3), hs.pca_directions(trajectory, 3)
    assert min(_cosines(got, reference)) > 1 - 1e-5
    moments.save(str(tmp_path / "m.safetensors"))
    loaded = HMoments.load(str(tmp_path / "m.safetensors"))
    assert loaded == moments and torch.equal(loaded.sketch, moments.sketch) and loaded.scatter is None
    with pytest.raises(ValueError, match="set k between 1 and 32"):
        moments.directions(33)
    with pytest.raises(ValueError, match="exact scatter and another a sketch"):
        small = random_trajectory()
        HMoments.of(small, sketch=True).merge(HMoments.of(small))


def test_statistics_refuse_a_shard_of_another_grid(tmp_path):
    a, b = HMoments.of(random_trajectory(steps=5)), HMoments.of(random_trajectory(steps=4))
    with pytest.raises(ValueError, match="same steps"):
        a.merge(b)
    a.save(str(tmp_path / "m.safetensors"))
    loaded = HMoments.load(str(tmp_path / "m.safetensors"))
    assert loaded == a and torch.equal(loaded.scatter, a.scatter) and torch.equal(loaded.mean, a.mean)


def test_invert_job_is_the_library_per_image_and_loads_as_a_trajectory(folder, tmp_path):
    out = str(tmp_path / "out")
    result = run_job(spec("invert", folder), out, progress=False)
    assert (result.images, result.ran, result.skipped, result.problems) == (10, 3, 0, [])
    tensors = shard_tensors(out)
    names = sorted(os.listdir(folder))
    for k, name in enumerate(names):
        inv = library_inversion(folder, name)
        assert torch.equal(tensors["x_T"][k:k + 1], inv.x_T)
        assert torch.equal(tensors["h"][:, k:k + 1], inv.trajectory.h)
    loaded = hs.HTrajectory.load(os.path.join(out, "shards", "00001.safetensors"),
                                 expect_fingerprint=bundled().fingerprint)  # what Load Trajectory reads
    assert loaded.batch_size == 4 and loaded.source == "inversion" and len(loaded.timesteps) == STEPS


def test_interrupted_job_resumes_skipping_finished_shards_bit_identical(folder, tmp_path, monkeypatch):
    whole, out = str(tmp_path / "whole"), str(tmp_path / "resumed")
    run_job(spec("invert", folder, shard_size=3), whole, progress=False)
    calls, item = [0], ShardRunner.item

    def interrupted(self, it):
        calls[0] += 1
        if calls[0] == 5:  # Ctrl-C in the middle of the second shard
            raise KeyboardInterrupt
        return item(self, it)

    monkeypatch.setattr(ShardRunner, "item", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(spec("invert", folder, shard_size=3), out, progress=False)
    monkeypatch.setattr(ShardRunner, "item", item)
    assert sorted(os.listdir(os.path.join(out, "shards"))) == ["00000.json", "00000.safetensors"]
    open(os.path.join(out, "shards", "00001.safetensors.hspace-tmp999"), "wb").write(b"half")  # a killed worker's
    first = os.stat(os.path.join(out, "shards", "00000.safetensors")).st_mtime_ns
    result = run_job(spec("invert", folder, shard_size=3), out, progress=False)
    assert (result.ran, result.skipped, result.images) == (3, 1, 10)
    assert os.stat(os.path.join(out, "shards", "00000.safetensors")).st_mtime_ns == first  # not rewritten
    assert not [f for f in os.listdir(os.path.join(out, "shards")) if "tmp" in f]
    a, b = shard_tensors(whole), shard_tensors(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_with_other_settings_or_changed_folder_is_refused(folder, tmp_path):
    out = str(tmp_path / "out")
    run_job(spec("invert", folder, shard_size=5), out, progress=False)
    with pytest.raises(ValueError, match="another job .*settings"):
        run_job(spec("invert", folder, shard_size=5, refine_iters=1), out, progress=False)
    for settings, phrase in ((dict(direction=os.path.join(folder, "img00.png")), "not a valid h-space direction"),
                             (dict(direction="", t_edit=200, t_boost=300), "t_edit .200. is below t_boost")):
        with pytest.raises(ValueError, match=phrase):  # refused before any model is loaded or shard runs
            run_job(spec("edit", folder, **settings), str(tmp_path / "edit"), progress=False)
    assert not os.path.exists(str(tmp_path / "edit"))


def test_pca_job_gives_pca_directions_of_the_folder(folder, tmp_path):
    out = str(tmp_path / "pca")
    result = run_job(spec("pca", folder, k=2), out, progress=False)
    names = sorted(os.listdir(folder))
    trajectories = [library_inversion(folder, n).trajectory for n in names]
    reference = hs.pca_directions(trajectories, 2)
    assert [os.path.basename(p) for p in result.outputs] == ["pca-0.safetensors", "pca-1.safetensors"]
    for path, ref in zip(result.outputs, reference):
        got = hs.Direction.load(path)  # what Load Direction reads
        # measured 2.4e-7 of the largest entry (float32 rows vs float64 statistics, SVD vs eigh)
        assert (got.delta - ref.delta).abs().max() <= 1e-5 * ref.delta.abs().max()
        assert got.metadata["images"] == 10 and got.fingerprint == bundled().fingerprint
        assert got.made_with == ref.made_with


def test_edit_job_bits_do_not_depend_on_the_shard_size_and_are_the_library_edit(tmp_path):
    folder = shape_folder(str(tmp_path / "six"), 6)
    direction = hs.pca_directions([library_inversion(folder, n).trajectory for n in sorted(os.listdir(folder))[:4]],
                                  1)[0]
    path = str(tmp_path / "d.safetensors")
    direction.save(path)
    settings = dict(direction=path, strength=1.5, t_edit=600, t_boost=300, eta_boost=1.0)  # boost: seeded noise
    threes, fours = str(tmp_path / "three"), str(tmp_path / "four")
    run_job(spec("edit", folder, shard_size=3, seed=7, **settings), threes, progress=False)
    run_job(spec("edit", folder, shard_size=4, seed=7, **settings), fours, progress=False)
    a, b = shard_tensors(threes)["images"], shard_tensors(fours)["images"]
    assert torch.equal(a, b)
    schedule = hs.EditSchedule(num_steps=STEPS, t_edit=600, t_boost=300)
    for k in (0, 5):
        name = sorted(os.listdir(folder))[k]
        assert torch.equal(a[k:k + 1], library_edit(folder, name, k, hs.Direction.load(path), 1.5, schedule, seed=7))
    assert not torch.equal(a[0], a[1])
    assert sorted(os.listdir(os.path.join(fours, "images"))) == sorted(os.listdir(folder))


def test_inject_capture_and_probe_jobs(folder, tmp_path):
    names = sorted(os.listdir(folder))
    content = os.path.join(folder, names[0])
    out = str(tmp_path / "inject")
    run_job(spec("inject", folder, shard_size=5, content=content, gamma=0.7, t_edit=400, t_boost=0), out,
            progress=False)
    mixed = shard_tensors(out)["images"]
    schedule = hs.EditSchedule(num_steps=STEPS, t_edit=400, t_boost=0)
    content_h = library_inversion(folder, names[0]).trajectory
    with torch.no_grad():
        expected = hs.inject(bundled(), library_inversion(folder, names[3]).x_T, content_h, 0.7, schedule)
    assert torch.equal(mixed[3:4], expected)

    captured = str(tmp_path / "capture")
    run_job(spec("capture", folder, shard_size=5), captured, progress=False)
    h = shard_tensors(captured)["h"]
    with torch.no_grad():
        reference = hs.capture(bundled(), library_inversion(folder, names[2]).x_T, STEPS)
    assert torch.equal(h[:, 2:3], reference.h)

    positives, negatives = str(tmp_path / "pos"), str(tmp_path / "neg")
    shape_folder(positives, 4, seed=11)
    shape_folder(negatives, 5, seed=12)
    out = str(tmp_path / "probe")
    result = run_job(spec("probe", {"positive": positives, "negative": negatives}, shard_size=3,
                          method="mean_difference", form="global"), out, progress=False)
    got = hs.Direction.load(result.outputs[0])
    pos = [library_inversion(positives, n).trajectory for n in sorted(os.listdir(positives))]
    neg = [library_inversion(negatives, n).trajectory for n in sorted(os.listdir(negatives))]
    cat = lambda ts: hs.HTrajectory(ts[0].timesteps, torch.cat([t.h for t in ts], 1), fingerprint=ts[0].fingerprint)
    ref = hs.probe_direction(cat(pos), cat(neg), "mean_difference", form="global")
    assert torch.allclose(got.delta, ref.delta, rtol=0, atol=1e-6 * ref.delta.abs().max())


def test_bad_images_are_named_skipped_and_listed_and_the_job_goes_on(folder, tmp_path, caplog):
    from PIL import Image

    bad = str(tmp_path / "bad")
    shape_folder(bad, 4)
    open(os.path.join(bad, "corrupt.png"), "wb").write(b"\x89PNG\r\n\x1a\n not really")
    Image.open(os.path.join(bad, "img01.png")).convert("L").save(os.path.join(bad, "grey.png"))
    Image.new("RGB", (16, 16)).save(os.path.join(bad, "small.png"))
    out = str(tmp_path / "out")
    caplog.set_level("INFO", logger="hspace.jobs")
    code = cli.main(["invert", bad, "--model", BUNDLED, "--out", out, "--steps", str(STEPS), "--shard-size", "3"])
    assert code == 1  # finished, with images skipped
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["images"] == 5  # 4 shapes and the grey-scale one, converted to RGB
    assert sorted(os.path.basename(p) for p, _ in summary["problems"]) == ["corrupt.png", "small.png"]
    reasons = dict((os.path.basename(p), r) for p, r in summary["problems"])
    assert "unreadable" in reasons["corrupt.png"] and "16×16" in reasons["small.png"] and "32×32" in reasons["small.png"]
    assert "grey.png is L; converted to RGB" in caplog.text
    assert "skipped" in caplog.text and "corrupt.png" in caplog.text

    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    assert cli.main(["pca", empty, "--model", BUNDLED, "--out", str(tmp_path / "e")]) == 2
    assert f"{empty} holds no images" in caplog.text


def test_ray_missing_says_how_to_install(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(SystemExit, match=r"pip install 'hspace-nodes\[cluster\]'"):
        run_job(spec("invert", folder), str(tmp_path / "out"), ray="local", progress=False)


def test_ten_thousand_tiny_files_plan_in_bounded_memory(tmp_path):
    """The manifest of 10,000 files (names only; no image is opened before its shard runs): resident and peak RSS
    measured in a fresh process before and after planning."""
    big = tmp_path / "many"
    big.mkdir()
    tiny = open(os.path.join(ROOT, "docs", "icon.png"), "rb").read()[:64]  # contents are never read when planning
    for i in range(10_000):
        (big / f"{i:05d}.png").write_bytes(tiny)
    code = f"""
import resource, json
from hspace_core.jobs import JobSpec, Manifest
rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before, peak_before = rss(), peak()
spec = JobSpec("invert", {{"images": {str(big)!r}}}, "model", {{}}, 16, (32, 32))
m = Manifest.open({str(tmp_path / 'out')!r}, spec)
shards = m.shards
print(json.dumps({{"shards": len(shards), "rss_kib": [before, rss()], "peak_kib": [peak_before, peak()]}}))
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    print("10,000 files:", measured)
    assert measured["shards"] == 625
    # names and shards only: a few MiB at most (measured +2.7 MiB resident, peak unchanged from the imports' 526 MiB)
    assert measured["rss_kib"][1] - measured["rss_kib"][0] < 32 * 1024
    assert measured["peak_kib"][1] - measured["peak_kib"][0] < 32 * 1024


def test_clip_command_trains_a_direction_on_the_folder(tmp_path, monkeypatch):
    from harness.tiny import tiny_clip

    import hspace_core.clip_directions as clip_directions

    folder = shape_folder(str(tmp_path / "four"), 4)
    monkeypatch.setattr(clip_directions, "load_open_clip", lambda name, pretrained: tiny_clip())  # no download
    out = str(tmp_path / "clip")
    assert cli.main(["clip", folder, "--model", BUNDLED, "--out", out, "--steps", str(STEPS), "--t-edit", "500",
                     "--source-text", "a photo", "--target-text", "a red photo", "--form", "global"]) == 0
    direction = hs.Direction.load(os.path.join(out, "direction.safetensors"))
    meta = direction.metadata
    assert (meta["source_text"], meta["target_text"], meta["images"], meta["train_steps"]) == \
        ("a photo", "a red photo", 4, STEPS)
    assert direction.form == "global" and direction.fingerprint == bundled().fingerprint
    start = torch.randn(direction.delta.shape, generator=torch.Generator().manual_seed(0)) * 0.2  # its --seed 0 start
    assert (direction.delta - start).abs().max() > 1e-3  # one epoch of SGD steps moved it
