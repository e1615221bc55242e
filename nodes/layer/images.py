"""LATENT / IMAGE conversion, image-space PSNR and LPIPS for the nodes."""
from __future__ import annotations

import logging

import torch

from ...hspace_core import lpips_distance


def latent_x(model, latent: dict) -> torch.Tensor:
    """LATENT → model-space tensor (the h-space latents are stored after ``process_latent_in``)."""
    return model.model.process_latent_in(latent["samples"].float())


def encode(vae, image: torch.Tensor) -> dict:
    return {"samples": vae.encode(image[:, :, :, :3])}


def decode(vae, latent: dict) -> torch.Tensor:
    images = vae.decode(latent["samples"])
    return images.reshape(-1, *images.shape[-3:]) if images.dim() == 5 else images


def latent_of(image, vae, latent) -> dict:
    """The LATENT a node works on: the connected latent, or the image through its VAE; never both."""
    if latent is not None and image is not None:
        raise ValueError("Both a latent and an image are connected: disconnect one (the latent, or the image and its "
                         "VAE); the node inverts exactly one of them.")
    if latent is not None:
        return latent
    if image is None or vae is None:
        raise ValueError("Connect either a latent, or an image together with its VAE.")
    return encode(vae, image)


def encoded_pixels(vae, image: torch.Tensor) -> torch.Tensor:
    """The part of ``image`` the VAE actually encodes: it crops each side to a multiple of its downscale factor."""
    cropped = vae.vae_encode_crop_pixels(image[:, :, :, :3])
    if cropped.shape != image[:, :, :, :3].shape:
        logging.info("h-space: the VAE encodes the central %s×%s of the %s×%s image; PSNR is measured on that part.",
                     cropped.shape[2], cropped.shape[1], image.shape[2], image.shape[1])
    return cropped


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(data_range**2 / mse)).item()


def lpips_by_name(backbone: str):
    if backbone.startswith("alex (random"):
        import lpips

        torch_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
        finally:
            torch.random.set_rng_state(torch_state)  # never leave the global RNG changed
        return lambda a, b: net(a.float(), b.float()).flatten()
    try:
        return lpips_distance(backbone)
    except Exception as error:  # offline, or a corrupt cache
        raise ValueError(f"Could not load LPIPS ({backbone}) weights: {error}. They download once from the internet; "
                         "connect once or copy them into torch's hub cache.") from error
