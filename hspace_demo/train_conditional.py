"""Fine-tune the bundled demo DDPM into a class-conditional one (label = shape type × polarity — light shape on a
dark background or the mirror image —, plus a null class for classifier-free guidance):
``python -m hspace_demo.train_conditional --out DIR --steps 1500 --export models/hspace-shapes-ddpm-cond``.

Polarity is in the label because it decides the image's mean colour, which is what ε depends on at large t: with
the shape type alone the conditional and unconditional ε barely differ and guidance does nothing measurable.

The U-Net is the bundled one with diffusers' class embedding (``num_class_embeds`` = shapes + 1, added to the time
embedding) initialised to zero, so step 0 is exactly the unconditional model.  Labels are dropped to the null class
for ``--p-uncond`` of each batch (Ho & Salimans 2022).  The skip-dropout regulariser of the base training is kept so
the decoder still depends on h.  Checkpoints every ``--save-every`` steps; rerunning resumes from the last one.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from .run import BUNDLED
from .shapes import SHAPES, make_batch
from .train import SkipDropout, diffuse, export_bundled, fit, resume

CLASSES = tuple(f"{shape}, {polarity}" for polarity in ("dark background", "light background") for shape in SHAPES)
NULL_CLASS = len(CLASSES)


def label_of(f) -> int:
    """Shape type + 4 · (light background): the dataset's light backgrounds have every channel ≥ 0.55."""
    return f.shape + len(SHAPES) * int(f.bg_top[0] >= 0.5)


def conditional_from(folder: str = BUNDLED):
    """The bundled U-Net with a zero class embedding of len(CLASSES) + 1 classes (the last one is 'no label')."""
    from diffusers import UNet2DModel

    base = UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    config = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
    unet = UNet2DModel(**{**config, "num_class_embeds": NULL_CLASS + 1})
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding") for k in missing):
        raise RuntimeError(f"unexpected weights: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(unet.class_embedding.weight)
    return unet


def batch_at(step: int, batch: int, seed: int, p_uncond: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one step, a function of the step alone (resumed runs see the same data)."""
    images, factors = make_batch(batch, seed=seed * 10_000_000 + 7_000_000 + step, palette="wide")
    labels = np.array([label_of(f) for f in factors])
    drop = np.random.default_rng([seed, step, 2]).random(batch) < p_uncond
    labels[drop] = NULL_CLASS
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def train(out: str, steps: int, batch: int = 32, lr: float = 1e-4, seed: int = 0, p_uncond: float = 0.2,
          ema_decay: float = 0.995, save_every: int = 50):
    os.makedirs(out, exist_ok=True)
    unet = conditional_from()
    ema = copy.deepcopy(unet).eval()
    # the zero-initialised class embedding learns 100× faster than the pretrained weights, or guidance stays weak
    embedding = list(unet.class_embedding.parameters())
    rest = [p for n, p in unet.named_parameters() if not n.startswith("class_embedding")]
    opt = torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": embedding, "lr": 100 * lr}], weight_decay=0.0)
    step = resume(os.path.join(out, "train_state.pt"), unet, ema, opt)
    gen = torch.Generator().manual_seed(seed * 1000 + step + 17)
    dropout = SkipDropout(unet, 0.5, 3, gen)

    def loss_at(step: int) -> torch.Tensor:
        x0, labels = batch_at(step, batch, seed, p_uncond)
        x_t, t, noise, _ = diffuse(x0, gen)
        dropout.new_batch(batch)
        return F.mse_loss(unet(x_t, t, class_labels=labels).sample, noise)

    try:
        return fit(out, unet, ema, opt, step, steps, loss_at, ema_decay=ema_decay, save_every=save_every, log_every=25)
    finally:
        dropout.remove()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="training folder (checkpoints; keep it outside the repository)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--p-uncond", type=float, default=0.2)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export", default="", help="after training, write the fp16 model folder here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    train(args.out, args.steps, args.batch, args.lr, args.seed, args.p_uncond, save_every=args.save_every)
    if args.export:
        export_bundled(args.out, args.export)
        with open(os.path.join(args.export, "labels.json"), "w") as f:
            json.dump({"classes": [*CLASSES, "(none)"], "null_class": NULL_CLASS}, f, indent=2)


if __name__ == "__main__":
    main()
