"""One labelled PNG of a run: a section per workflow, rows of captioned images, small images upscaled (nearest)."""
from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

PAD, TEXT_H, BACKGROUND, INK = 8, 14, (255, 255, 255), (0, 0, 0)
FONT = ImageFont.load_default()

Cell = tuple[str, "bytes | str"]  # caption, PNG bytes or a path


LARGE = 128  # images this wide are shown as they are (labelled grids come upscaled by their node)


def upscaled(data: bytes | str, scale: int) -> Image.Image:
    """PNG bytes or a path → RGB image, each pixel a scale × scale block unless the image is already large."""
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("RGB")
    if image.width >= LARGE:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _cell_width(caption: str, image: Image.Image) -> int:
    return max(image.width, int(FONT.getlength(caption)))


def _row_size(row: list[tuple[str, Image.Image]]) -> tuple[int, int]:
    return sum(_cell_width(c, i) + PAD for c, i in row) - PAD, TEXT_H + max(i.height for _, i in row)


def contact_sheet(sections: list[tuple[str, list[list[Cell]]]], scale: int = 4) -> Image.Image:
    """``sections``: (title, rows of (caption, image)) → the sheet: each title over a rule, then its rows, every image
    under its caption."""
    sections = [(title, [[(c, upscaled(d, scale)) for c, d in row] for row in rows if row]) for title, rows in sections]
    sizes = [_row_size(row) for _, rows in sections for row in rows]
    width = max([w for w, _ in sizes] + [300]) + 2 * PAD
    height = PAD + sum(TEXT_H + PAD for _ in sections) + sum(h + PAD for _, h in sizes)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw, y = ImageDraw.Draw(sheet), PAD
    for title, rows in sections:
        draw.text((PAD, y), title, fill=INK, font=FONT)
        draw.line((PAD, y + TEXT_H - 1, width - PAD, y + TEXT_H - 1), fill=INK)
        y += TEXT_H + PAD
        for row in rows:
            x = PAD
            for caption, image in row:
                draw.text((x, y), caption, fill=INK, font=FONT)
                sheet.paste(image, (x, y + TEXT_H))
                x += _cell_width(caption, image) + PAD
            y += _row_size(row)[1] + PAD
    return sheet
