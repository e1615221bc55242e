"""Train the bundled demo DDPM: ``python -m hspace_demo.train --out models/hspace-shapes-ddpm``.

A diffusers ``UNet2DModel`` (ε-prediction, 1000 linear betas) on the procedural shapes.  While training, the
skip connections feeding the deepest up blocks are zeroed for a random part of each batch: a regulariser that
makes the decoder depend on the bottleneck h (without it, swapping h barely changes ε).  Optionally
(``--restyle P``), for a random ``P`` of the other images the decoder gets the h of a recoloured twin (same
shape, size and position, new colours, polarity included) with the image's own skips, and must still predict the
image's noise: the decoder learns to take colours from the skips and not from h, which is what content injection
relies on.  The saved model is a plain ``UNet2DModel``.  Checkpoints every ``--save-every`` steps; rerunning resumes from the last one.
Further training or fine-tuning starts from the shipped weights: ``--init-from models/hspace-shapes-ddpm`` (weights
and EMA from that folder, a fresh optimiser, steps counted from 0).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .shapes import Factors, make_batch, render, sample_background, sample_colours, with_factors

log = logging.getLogger("hspace.train")

UNET_CONFIG = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64, 128),
                   layers_per_block=2, down_block_types=("DownBlock2D",) * 4, up_block_types=("UpBlock2D",) * 4,
                   norm_num_groups=8, add_attention=True, attention_head_dim=32)
SCHEDULER_CONFIG = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                    "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": False,
                    "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "leading"}


def build_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**UNET_CONFIG)


class SkipDropout:
    """Zero the skips entering the ``deepest`` up blocks for a random ``p`` of the batch (training only)."""

    def __init__(self, unet, p: float, deepest: int, generator: torch.Generator):
        self.p, self.generator, self.keep = p, generator, None
        self.handles = [block.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for block in list(unet.up_blocks)[:deepest]]

    def new_batch(self, batch: int) -> None:
        self.keep = (torch.rand(batch, generator=self.generator) >= self.p).float()[:, None, None, None]

    def _hook(self, module, args, kwargs):
        if self.keep is None:
            return None
        args = list(args)
        skips = args[1] if len(args) > 1 else kwargs["res_hidden_states_tuple"]
        skips = tuple(s * self.keep.to(s) for s in skips)
        if len(args) > 1:
            args[1] = skips
        else:
            kwargs["res_hidden_states_tuple"] = skips
        return tuple(args), kwargs

    def remove(self):
        for h in self.handles:
            h.remove()


def load_weights(folder: str) -> dict:
    """fp32 state dict of a diffusers folder's UNet2DModel (``unet/`` subfolder or bare), e.g. the shipped fp16 one."""
    from diffusers import UNet2DModel

    sub = "unet" if os.path.isdir(os.path.join(folder, "unet")) else None
    return UNet2DModel.from_pretrained(folder, subfolder=sub, torch_dtype=torch.float32).state_dict()


def save_pipeline_folder(unet, out: str) -> None:
    """diffusers folder layout: unet/config.json + safetensors, scheduler/scheduler_config.json."""
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER_CONFIG, f, indent=2)


class HSwap:
    """Replace the middle block's output h by ``h_other`` for the images in ``mask`` (training only)."""

    def __init__(self, unet):
        self.h_other = self.mask = None
        self.handle = unet.mid_block.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.mask is None:
            return None
        return torch.where(self.mask[:, None, None, None], self.h_other.to(output), output)

    def capture(self, unet, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """h of ``x_t`` (no gradient), with the swap switched off."""
        seen = {}
        handle = unet.mid_block.register_forward_hook(lambda m, a, out: seen.setdefault("h", out.detach()))
        self.mask = None
        try:
            with torch.no_grad():
                unet(x_t, t)
        finally:
            handle.remove()
        return seen["h"]

    def remove(self):
        self.handle.remove()


def training_batch(step: int, batch: int, seed: int = 0, centred_fraction: float = 0.25,
                   wide_palette_from: int = 0, restyled: bool = False) -> np.ndarray:
    """The images of one training step: a function of the step alone, so a resumed run sees the same data.

    ``restyled``: the same shapes, sizes and positions with new colours (``restyle``), drawn from their own stream.
    """
    n_centred = int(batch * centred_fraction)
    palette = "wide" if step >= wide_palette_from else "dark"
    _, free = make_batch(batch - n_centred, seed=seed * 10_000_000 + 2 * step, palette=palette)
    _, cent = make_batch(n_centred, seed=seed * 10_000_000 + 2 * step + 1, centred=True, palette=palette)
    factors = free + cent
    if restyled:
        rng = np.random.default_rng([seed, step, 1])
        factors = [restyle(f, rng, palette) for f in factors]
    return np.stack([render(f) for f in factors])


def restyle(f: Factors, rng: np.random.Generator, palette: str) -> Factors:
    """The same content with new colours from ``palette`` (in "wide", mirrored half of the time)."""
    mirrored = palette == "wide" and rng.random() < 0.5
    fg, bg_top = sample_colours(rng, mirrored)
    bg_bottom = bg_top if f.bg_top == f.bg_bottom else sample_background(rng, mirrored)
    return with_factors(f, fg=fg, bg_top=bg_top, bg_bottom=bg_bottom)


def train(out: str, steps: int, batch: int = 64, lr: float = 3e-4, seed: int = 0, skip_drop: float = 0.5,
          skip_drop_blocks: int = 3, ema_decay: float = 0.999, save_every: int = 200, centred_fraction: float = 0.25,
          wide_palette_from: int = 0, restyle_prob: float = 0.0, init_from: str | None = None):
    """``wide_palette_from``: the step from which the data use the "wide" palette (the "dark" one before it);
    ``restyle_prob``: the share of the images whose skips are kept that get a recoloured twin's h;
    ``init_from``: a diffusers folder (the shipped fp16 one) whose weights start a new run (ignored on resume)."""
    os.makedirs(out, exist_ok=True)
    ckpt_path = os.path.join(out, "train_state.pt")
    unet = build_unet(seed)
    ema = copy.deepcopy(unet).eval()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    step = resume(ckpt_path, unet, ema, opt)
    if step == 0 and init_from is not None:
        weights = load_weights(init_from)
        unet.load_state_dict(weights)
        ema.load_state_dict(weights)
        log.info("starting from the weights in %s", init_from)
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    dropout = SkipDropout(unet, skip_drop, skip_drop_blocks, gen)
    swap = HSwap(unet)

    def loss_at(step: int) -> torch.Tensor:
        x0 = torch.from_numpy(training_batch(step, batch, seed, centred_fraction, wide_palette_from))
        x_t, t, noise, a = diffuse(x0, gen)
        dropout.new_batch(batch)
        if restyle_prob > 0:  # drawn only when used, so runs without it keep their random stream
            mask = (torch.rand(batch, generator=gen) < restyle_prob) & (dropout.keep.flatten() > 0)
            twin = torch.from_numpy(training_batch(step, batch, seed, centred_fraction, wide_palette_from, restyled=True))
            h_twin = swap.capture(unet, a.sqrt() * twin + (1 - a).sqrt() * noise, t)
            swap.mask, swap.h_other = mask, h_twin
        return F.mse_loss(unet(x_t, t).sample, noise)

    try:
        return fit(out, unet, ema, opt, step, steps, loss_at, ema_decay=ema_decay, save_every=save_every,
                   log_every=50, warmup=200)
    finally:
        dropout.remove()
        swap.remove()


ALPHA_BAR = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()  # the linear βs


def diffuse(x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, ε, ᾱ_t) for clean images at uniform random t: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (DDPM, Ho et al. 2020,
    Algorithm 1)."""
    t = torch.randint(0, len(ALPHA_BAR), (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = ALPHA_BAR[t][:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise, a


def fit(out: str, unet, ema, opt, step: int, steps: int, loss_at, *, ema_decay: float, save_every: int,
        log_every: int, warmup: int = 0):
    """The training loop of both demo models, from ``step`` to ``steps``: ``loss_at(step)`` → one ``update``, a
    log line every ``log_every`` steps, a ``checkpoint`` every ``save_every`` steps and at the end.  ``warmup`` > 0
    ramps every parameter group's learning rate linearly over that many steps.  Returns the EMA model."""
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    unet.train()
    t0, losses = time.time(), []
    while step < steps:
        if warmup:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * min(1.0, (step + 1) / warmup)
        loss = loss_at(step)
        update(unet, ema, opt, loss, step, ema_decay)
        step += 1
        losses.append(loss.item())
        if step % log_every == 0:
            log.info("step %d loss %.4f (%.2f s/step)", step, float(np.mean(losses)), (time.time() - t0) / len(losses))
            losses, t0 = [], time.time()
        if step % save_every == 0 or step == steps:
            checkpoint(out, unet, ema, opt, step)
    return ema


def resume(ckpt_path: str, unet, ema, opt) -> int:
    """Load a training state if there is one; returns its step (0 for a fresh run)."""
    if not os.path.exists(ckpt_path):
        return 0
    state = torch.load(ckpt_path, weights_only=True)
    unet.load_state_dict(state["unet"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    log.info("resumed at step %d", int(state["step"]))
    return int(state["step"])


def update(unet, ema, opt, loss, step: int, ema_decay: float) -> None:
    """One optimiser step (gradients clipped to norm 1) and the EMA update, with EMA warm-up."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        decay = min(ema_decay, (1 + step) / (10 + step))
        for pe, p in zip(ema.parameters(), unet.parameters()):
            pe.lerp_(p, 1 - decay)


def checkpoint(out: str, unet, ema, opt, step: int) -> None:
    """The resumable state (atomically replaced) and the EMA weights as a diffusers folder."""
    ckpt_path = os.path.join(out, "train_state.pt")
    torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step},
               ckpt_path + ".tmp")
    os.replace(ckpt_path + ".tmp", ckpt_path)
    save_pipeline_folder(ema, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/hspace-shapes-ddpm")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-drop", type=float, default=0.5)
    p.add_argument("--skip-drop-blocks", type=int, default=3)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wide-palette-from", type=int, default=0,
                   help="training step from which images use the wide palette (the shipped model: 4000)")
    p.add_argument("--restyle", type=float, default=0.0,
                   help="share of the images (among those whose skips are kept) trained with a recoloured twin's h")
    p.add_argument("--init-from", metavar="FOLDER",
                   help="start from this diffusers folder's weights (e.g. models/hspace-shapes-ddpm) instead of random ones")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    train(args.out, args.steps, args.batch, args.lr, args.seed, args.skip_drop, args.skip_drop_blocks,
          save_every=args.save_every, wide_palette_from=args.wide_palette_from, restyle_prob=args.restyle,
          init_from=args.init_from)


if __name__ == "__main__":
    main()


def export_bundled(train_dir: str, dest: str) -> None:
    """Copy the trained EMA weights into the pack as fp16 safetensors (half the size; loaded back as fp32)."""
    from diffusers import UNet2DModel
    import shutil

    unet = UNet2DModel.from_pretrained(os.path.join(train_dir, "unet"), torch_dtype=torch.float32)
    unet.to(torch.float16).save_pretrained(os.path.join(dest, "unet"), safe_serialization=True)
    config_path = os.path.join(dest, "unet", "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.pop("_name_or_path", None)  # the trainer's local folder means nothing to users
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.makedirs(os.path.join(dest, "scheduler"), exist_ok=True)
    shutil.copy(os.path.join(train_dir, "scheduler", "scheduler_config.json"), os.path.join(dest, "scheduler"))
