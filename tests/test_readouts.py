"""The pixel read-outs recover the known factors of the procedural images."""
import numpy as np

from hspace_demo.readouts import area, colour_distance, foreground_colour, foreground_mask, iou, mean_background
from hspace_demo.shapes import SHAPES, Factors, make_batch, render, shape_mask, with_factors


def test_mask_iou_and_colours_match_the_factors():
    images, factors = make_batch(64, seed=4)
    ious, fg, bg = [], [], []
    for img, f in zip(images, factors):
        truth = shape_mask(f.shape, f.radius, f.cx, f.cy) > 0.5
        ious.append(iou(foreground_mask(img), truth))
        fg.append(colour_distance(foreground_colour(img), f.fg))
        bg.append(colour_distance(mean_background(img), (np.asarray(f.bg_top) + np.asarray(f.bg_bottom)) / 2))
    assert np.mean(ious) > 0.85 and min(ious) > 0.55
    assert np.median(fg) < 0.03 and max(fg) < 0.25
    assert max(bg) < 0.05


def test_area_grows_with_radius_and_iou_separates_positions():
    f = Factors(SHAPES.index("circle"), 6.0, 16.0, 16.0, (0.9, 0.9, 0.1), (0.1, 0.1, 0.3), (0.1, 0.1, 0.3))
    small, big = render(f), render(with_factors(f, radius=10.0))
    assert area(big) > 2 * area(small)
    moved = render(with_factors(f, cx=24.0))
    assert iou(foreground_mask(small), foreground_mask(moved)) < 0.2


def test_looks_like_dataset_accepts_training_images_and_rejects_noise():
    import numpy as np

    from hspace_demo import readouts as ro
    from hspace_demo.shapes import make_batch

    images, _ = make_batch(64, seed=5)
    assert all(ro.looks_like_dataset(img) for img in images)
    rng = np.random.default_rng(0)
    assert not any(ro.looks_like_dataset(rng.uniform(-1, 1, (3, 32, 32))) for _ in range(32))
    assert not any(ro.looks_like_dataset(np.clip(img + rng.normal(0, 0.3, img.shape), -1, 1)) for img in images[:16])
    two = np.full((3, 32, 32), -0.8, np.float32)
    two[:, 4:12, 4:12] = two[:, 18:28, 18:28] = 0.9  # two detached blobs
    assert ro.largest_component_fraction(ro.foreground_mask(two)) < 0.9 and not ro.looks_like_dataset(two)


def test_classify_shape_recovers_the_type_on_both_palettes():
    from hspace_demo.readouts import classify_shape

    for palette in ("dark", "wide"):
        for centred in (False, True):
            images, factors = make_batch(100, seed=6, centred=centred, palette=palette)
            found = [classify_shape(img) for img in images]
            assert np.mean([k == f.shape for (k, _), f in zip(found, factors)]) >= 0.97, (palette, centred)
            assert np.median([score for _, score in found]) > 0.85
    assert classify_shape(np.full((3, 32, 32), -0.5, np.float32)) == (-1, 0.0)
    blob = render(Factors(SHAPES.index("circle"), 8.0, 16.0, 16.0, (0.9, 0.2, 0.2), (0.1,) * 3, (0.1,) * 3))
    ragged = blob.copy()
    ragged[:, 10:22:2, 6:26] = -0.8  # stripes cut out of the circle: still circle-like, but a poor match
    assert classify_shape(blob)[0] == SHAPES.index("circle") and classify_shape(ragged)[1] < classify_shape(blob)[1] - 0.2
    speckled = blob.copy()
    speckled[:, 28:30, 3:9] = 0.9  # a detached speck of an uneven background: ignored
    assert classify_shape(speckled) == classify_shape(blob)


def test_palettes_dark_keeps_every_background_dark_and_wide_mirrors_half():
    _, dark = make_batch(200, seed=7, palette="dark")
    _, wide = make_batch(200, seed=7, palette="wide")
    assert all(max(f.bg_top + f.bg_bottom) <= 0.45 for f in dark)
    light = [min(f.bg_top + f.bg_bottom) >= 0.55 for f in wide]
    assert 0.35 < np.mean(light) < 0.65
    assert all(light_bg or max(f.bg_top + f.bg_bottom) <= 0.45 for light_bg, f in zip(light, wide))
    # a dark shape on a light background, as far from it as a bright one on a dark background
    assert all(colour_distance(f.fg, f.bg_top) > 0.25 for f in wide)
    import pytest

    with pytest.raises(ValueError, match="palette"):
        make_batch(1, seed=0, palette="pastel")


def test_training_batches_switch_palette_at_the_given_step_and_are_a_function_of_the_step():
    from hspace_demo.readouts import background_colour
    from hspace_demo.train import training_batch

    def light_share(images):
        return np.mean([background_colour(img).mean() > 0.5 for img in images])

    before, after = training_batch(3999, 64, wide_palette_from=4000), training_batch(4000, 64, wide_palette_from=4000)
    assert light_share(before) == 0.0 and 0.3 < light_share(after) < 0.7
    assert np.array_equal(after, training_batch(4000, 64, wide_palette_from=4000))
    assert not np.array_equal(after, training_batch(4001, 64, wide_palette_from=4000))
    assert before.shape == (64, 3, 32, 32)


def test_restyled_training_batches_keep_every_shape_and_change_the_colours():
    from hspace_demo.readouts import background_colour, foreground_mask, iou, mean_background
    from hspace_demo.train import training_batch

    images = training_batch(6000, 32, wide_palette_from=4000)
    twins = training_batch(6000, 32, wide_palette_from=4000, restyled=True)
    assert min(iou(foreground_mask(a), foreground_mask(b)) for a, b in zip(images, twins)) > 0.9
    moved = [colour_distance(mean_background(a), mean_background(b)) for a, b in zip(images, twins)]
    assert np.median(moved) > 0.3
    flipped = [(background_colour(a).mean() > 0.5) != (background_colour(b).mean() > 0.5) for a, b in zip(images, twins)]
    assert 0.2 < np.mean(flipped) < 0.8  # polarity is part of the style the twin changes
    assert np.array_equal(twins, training_batch(6000, 32, wide_palette_from=4000, restyled=True))
    assert np.array_equal(images, training_batch(6000, 32, wide_palette_from=4000))  # the plain stream is untouched


def test_h_swap_replaces_the_bottleneck_only_for_the_masked_images():
    import torch
    from diffusers import UNet2DModel

    from hspace_demo.train import HSwap

    unet = UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).eval()
    g = torch.Generator().manual_seed(0)
    x, other = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([500, 500])
    swap = HSwap(unet)
    try:
        with torch.no_grad():
            plain = unet(x, t).sample
            swap.mask, swap.h_other = torch.tensor([True, False]), swap.capture(unet, x, t)
            assert torch.allclose(unet(x, t).sample, plain, atol=1e-6)  # its own h: nothing changes
            swap.mask, swap.h_other = torch.tensor([True, False]), swap.capture(unet, other, t)
            swapped = unet(x, t).sample
    finally:
        swap.remove()
    assert (swapped[0] - plain[0]).abs().max() > 1e-3
    assert torch.equal(swapped[1], plain[1])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, plain)  # removed: the U-Net is plain again
