"""Sweeps as pictures: a value-major sweep batch → one grid with one labelled cell per value."""
import numpy as np
import pytest
import torch

from harness.inprocess import node_module


@pytest.fixture(scope="module")
def grids():
    """nodes/layer/grids.py (the nodes layer, imported with ComfyUI)."""
    return node_module("nodes.layer.grids")


def _solid(colours, size=8):
    return torch.stack([torch.tensor(c, dtype=torch.float32).expand(size, size, 3) for c in colours])


def test_sweep_tiles_put_each_value_in_its_column(grids):
    images = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 2, 2, 3)  # 3 values × 2 images
    tiles = grids.sweep_tiles(images, 3)
    assert tiles.shape == (2, 3, 2, 2, 3)
    for b in range(2):
        for k in range(3):
            assert float(tiles[b, k, 0, 0, 0]) == k * 2 + b  # batch index k·B + b
    with pytest.raises(ValueError, match="not a multiple of the 4 sweep values"):
        grids.sweep_tiles(images, 4)


def test_value_labels_write_signs_only_for_signed_sweeps(grids):
    assert grids.value_labels([-2.0, 0.0, 1.5], "strength") == ["strength -2", "strength +0", "strength +1.5"]
    assert grids.value_labels([0.3, 0.5], "gamma") == ["gamma 0.3", "gamma 0.5"]


def test_the_grid_has_one_labelled_cell_per_value(grids):
    values = [-2.0, -1.0, 0.0, 1.0, 2.0]
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)]
    scale, pad, tile = 4, 2, 32
    image = grids.grid_image(_solid(colours)[None], [""], grids.value_labels(values, "strength"), scale=scale,
                             pad=pad)[0].numpy()
    left = 2 * pad + 4  # an empty row label
    top = image.shape[0] - tile - 2 * pad
    assert image.shape[1] == left + len(values) * (tile + pad) + pad
    strips = []
    for k, colour in enumerate(colours):
        x = left + k * (tile + pad)
        cell = image[top:top + tile, x:x + tile]
        assert np.allclose(cell, colour), k  # the tile, upscaled, in its cell
        assert np.all(image[top:top + tile, x + tile:x + tile + pad] == 1), k  # white gutter between cells
        strip = image[:top, x:x + tile]
        dark = np.argwhere(strip.min(axis=-1) < 0.5)
        assert len(dark) > 10, k  # a label is written above the cell ...
        assert abs(dark[:, 1].mean() - tile / 2) < tile / 4, k  # ... centred over it
        strips.append(strip)
    for i in range(len(strips)):  # ... and each label says its own value
        for j in range(i + 1, len(strips)):
            assert not np.array_equal(strips[i], strips[j]), (values[i], values[j])
    # a label is exactly the text: re-rendering the same label over another cell gives the same strip
    again = grids.grid_image(_solid(colours[::-1])[None], [""], grids.value_labels(values, "strength"), scale=scale,
                             pad=pad)[0].numpy()
    assert np.array_equal(again[:top], image[:top])


def test_rows_are_labelled_and_large_tiles_get_a_larger_font(grids):
    small = grids.grid_image(_solid([(0, 0, 0)] * 2).reshape(2, 1, 8, 8, 3), ["image 1", "image 2"], ["x"], scale=1)
    large = grids.grid_image(_solid([(0, 0, 0)] * 2, size=256).reshape(2, 1, 256, 256, 3), ["image 1", "image 2"],
                             ["x"], scale=1)
    top_small = small.shape[1] - 2 * (8 + 2) - 2
    top_large = large.shape[1] - 2 * (256 + 2) - 2
    assert top_large > top_small  # 256-pixel tiles: a label strip tall enough to read
    with pytest.raises(ValueError, match="2 row and 1 column labels"):
        grids.grid_image(_solid([(0, 0, 0)] * 2).reshape(2, 1, 8, 8, 3), ["only one"], ["x"])
