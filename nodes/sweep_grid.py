"""H-Space Label Sweep Grid: a decoded strength or γ sweep → one labelled grid image (one column per value)."""
from __future__ import annotations

from comfy_api.latest import io

from .layer import CATEGORY, GRID_ROWS, GRID_VALUES, HSpaceNode, grids, values_input, values_of


class LabelSweepGrid(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceLabelSweepGrid", display_name="H-Space Label Sweep Grid", category=CATEGORY,
            description="A decoded sweep (H-Space Asyrp Edit's strength_sweep, H-Space Slerp Content Inject's gamma_sweep) → one "
                        "grid image: one column per value, labelled with it; one row per input image.",
            inputs=[
                io.Image.Input("images", tooltip="The decoded sweep batch (value-major, as the sweep node returns it)."),
                values_input("values", GRID_VALUES, "The sweep's values in batch order: connect the sweep node's "
                             "'sweep' output", default="-2, -1, 0, 1, 2", optional=False),
                io.String.Input("label", default="strength", tooltip="Written before each value, e.g. strength or gamma (PIL's default font: Latin letters)."),
                io.Int.Input("scale", default=1, min=1, max=16,
                             tooltip="Tile upscaling (nearest): 4 for the bundled 32-pixel model, 1 for SD."),
                values_input("row_values", GRID_ROWS, "A second sweep inside the first (H-Space StyleID Inject's "
                             "h_sweep): one row per value, labelled with row_label. Empty: one row per input image"),
                io.String.Input("row_label", default="gamma_h", optional=True, tooltip="Written before each row value."),
            ],
            outputs=[io.Image.Output("grid", tooltip="The labelled grid (one image).")],
        )

    @classmethod
    def execute(cls, images, values, label, scale, row_values="", row_label="gamma_h") -> io.NodeOutput:
        numbers = values_of(values, "values", GRID_VALUES)
        tiles = grids.sweep_tiles(images[..., :3].float().cpu(), len(numbers))
        rows = [f"image {i + 1}" for i in range(tiles.shape[0])] if tiles.shape[0] > 1 else [""]
        if row_values.strip():
            inner = values_of(row_values, "row_values", GRID_ROWS)
            if tiles.shape[0] != len(inner):
                raise ValueError(f"row_values holds {len(inner)} values but each column has {tiles.shape[0]} images: "
                                 "connect the sweep node's h_sweep, for one image.")
            rows = grids.value_labels(inner, row_label)
        return io.NodeOutput(grids.grid_image(tiles, rows, grids.value_labels(numbers, label), scale=scale))
