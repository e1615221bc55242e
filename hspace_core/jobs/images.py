"""A folder of images as a job's items: a sorted listing that never holds more than the names, and a reader that
turns one file into a (1, C, H, W) tensor in [−1, 1] or says, naming the file, why it cannot."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from .atomic import temporary_name

log = logging.getLogger("hspace.jobs")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageProblem(ValueError):
    """One input image the job could not use (unreadable, wrong size, wrong channels); the job goes on without it."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def list_images(folder: str) -> list[str]:
    """The image files directly in ``folder`` (by extension, case-insensitive), sorted by name: the items' order,
    hence their indices and seeds.  An empty or missing folder is refused, naming it."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder: give the folder that holds the images.")
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"{folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}): point the job at the "
                         "folder of images itself.")
    return names


@dataclass(frozen=True)
class ImageSpec:
    """What every image of a job must be: ``size`` (height, width) and ``channels`` (3: RGB; 1: greyscale)."""

    size: tuple[int, int]
    channels: int = 3


def read_image(folder: str, name: str, spec: ImageSpec) -> torch.Tensor:
    """``folder/name`` as a float32 (1, C, H, W) tensor in [−1, 1].  A greyscale image for an RGB model (or an RGBA /
    palette image) is converted to RGB with a log line; an unreadable file or another size raises ``ImageProblem``
    (no resizing: a resized image would be a different image)."""
    from PIL import Image, UnidentifiedImageError

    path = os.path.join(folder, name)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            want = "RGB" if spec.channels == 3 else "L"
            if mode != want:
                log.info("%s is %s; converted to %s for the model.", name, mode, want)
                image = image.convert(want)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageProblem(name, f"unreadable ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
                                 "replace or remove the file") from None
    if array.ndim == 2:
        array = array[:, :, None]
    height, width = array.shape[:2]
    if (height, width) != tuple(spec.size):
        raise ImageProblem(name, f"is {width}×{height} but the job's images are {spec.size[1]}×{spec.size[0]}; "
                                 "resize or crop it to that size (the job does not resize)")
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def write_png(x: torch.Tensor, path: str) -> None:
    """One (C, H, W) image in [−1, 1] as an 8-bit PNG, written atomically (temporary file, then rename)."""
    from PIL import Image

    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    tmp = temporary_name(path)
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
