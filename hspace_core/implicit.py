"""Asyrp's implicit direction f_t(h_t, t) and the official Asyrp checkpoints.

f_t is two 1×1 convolutions joined by the U-Net's own timestep embedding, a GroupNorm and a SiLU
(Kwon et al. 2023, §3.2 and appendix: "implicit function"):

    f_t(h, t) = conv2(SiLU(GroupNorm(conv1(h) + W_t·SiLU(temb(t)))))

temb is the diffusion model's time embedding (sinusoid → linear → SiLU → linear); a frozen copy of it travels
with the direction, so a saved f_t needs no model to evaluate.  On a flow-matching transformer (Flux's ``time_in``,
SD3's ``t_embedder``: the same sinusoid and MLP) the network's time input is not the table entry t but σ_t·1000, so
the copy also keeps that input for every entry of the model's σ table (``time_input``), and temb(t) reads it there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TimeEmbedding(nn.Module):
    """A diffusion U-Net's timestep embedding: sinusoid (dim, flip_sin_to_cos, freq_shift) then a 2-layer MLP.

    Covers the original DDPM / Asyrp U-Net (sin first, shift 1), diffusers (both conventions) and ComfyUI's
    U-Net (cos first, shift 0).
    """

    def __init__(self, dim: int, out_dim: int, flip_sin_to_cos: bool, freq_shift: float, hidden: int | None = None,
                 table_size: int = 0):
        super().__init__()
        self.dim, self.flip_sin_to_cos, self.freq_shift = int(dim), bool(flip_sin_to_cos), float(freq_shift)
        self.linear_1 = nn.Linear(self.dim, hidden or out_dim)
        self.linear_2 = nn.Linear(hidden or out_dim, out_dim)
        if table_size:  # a flow transformer's time input per table entry (``with_time_input``); else t itself
            self.register_buffer("time_input", torch.zeros(int(table_size)))

    @property
    def config(self) -> dict:
        table = {"table_size": self.time_input.numel()} if hasattr(self, "time_input") else {}
        return {"dim": self.dim, "out_dim": self.linear_2.out_features, "hidden": self.linear_1.out_features,
                "flip_sin_to_cos": self.flip_sin_to_cos, "freq_shift": self.freq_shift, **table}

    def with_time_input(self, time_input: torch.Tensor) -> "TimeEmbedding":
        """This embedding read at ``time_input[t]`` for table entry t (the network's own time input per entry of
        its σ table: σ_t·1000 on Flux and SD3), in place; returns itself."""
        with torch.inference_mode(False), torch.no_grad():
            values = time_input.detach().float().flatten().to(self.linear_1.weight.device).clone()
            self.register_buffer("time_input", values)
        return self

    def check_timestep(self, t: int) -> None:
        """Refuse a table entry outside the σ table the embedding was copied with (on the host: no device sync)."""
        table = getattr(self, "time_input", None)
        if table is not None and not 0 <= int(t) < table.numel():
            raise ValueError(f"This f_t was made on a model with a {table.numel()}-entry σ table; timestep {int(t)} "
                             "is outside it: apply it with the model it was trained on.")

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time the network embeds for table entries ``t``: t itself, or its ``time_input``."""
        table = getattr(self, "time_input", None)
        return t if table is None else table.to(t.device)[t.long()]

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - self.freq_shift)
        angles = t.float()[:, None] * exponent.exp()[None]
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
        if self.flip_sin_to_cos:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)
        return F.pad(emb, (0, self.dim % 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """temb(t) in float32 on t's device (the frozen copy may live elsewhere, e.g. on the CPU)."""
        p = {k: v.to(t.device, torch.float32) for k, v in self.state_dict(keep_vars=True).items()}
        x = F.linear(self.sinusoid(self.network_time(t)), p["linear_1.weight"], p["linear_1.bias"])
        return F.linear(F.silu(x), p["linear_2.weight"], p["linear_2.bias"])

    @classmethod
    def copy_of(cls, linear_1: nn.Linear, linear_2: nn.Linear, dim: int, flip_sin_to_cos: bool,
                freq_shift: float) -> "TimeEmbedding":
        """A frozen, autograd-usable float32 copy of a model's time MLP, on the model's device (its weights may be
        inference tensors)."""
        with torch.inference_mode(False), torch.no_grad():
            emb = cls(dim, linear_2.out_features, flip_sin_to_cos, freq_shift, hidden=linear_1.out_features)
            emb = emb.to(linear_1.weight.device)
            for mine, theirs in ((emb.linear_1, linear_1), (emb.linear_2, linear_2)):
                mine.weight.copy_(theirs.weight.detach().float())
                mine.bias.copy_(theirs.bias.detach().float())
        return emb.requires_grad_(False)

    @classmethod
    def of_diffusers_unet(cls, unet) -> "TimeEmbedding":
        """The frozen copy of a diffusers U-Net's ``time_proj`` + ``time_embedding``."""
        proj, mlp = unet.time_proj, unet.time_embedding
        return cls.copy_of(mlp.linear_1, mlp.linear_2, proj.num_channels, proj.flip_sin_to_cos, proj.downscale_freq_shift)


def group_count(channels: int, preferred: int = 32) -> int:
    """The largest group count ≤ ``preferred`` that divides ``channels`` (32 for Asyrp's 512-channel h)."""
    return max(g for g in range(1, min(preferred, channels) + 1) if channels % g == 0)


class ImplicitDirectionNet(nn.Module):
    """f_t(h_t, t) → Δh_t.  ``zero_init`` zeroes conv2 so an untrained f_t is exactly 0 (the official code
    starts from PyTorch's default initialisation instead)."""

    def __init__(self, channels: int, time_embedding: TimeEmbedding, zero_init: bool = True):
        super().__init__()
        self.channels = int(channels)
        self.time_embedding = time_embedding.requires_grad_(False)
        temb_dim = time_embedding.linear_2.out_features
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.temb_proj = nn.Linear(temb_dim, channels)
        self.norm2 = nn.GroupNorm(group_count(channels), channels, eps=1e-6)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    @property
    def config(self) -> dict:
        return {"channels": self.channels, "groups": self.norm2.num_groups, "time_embedding": self.time_embedding.config}

    def forward(self, h: torch.Tensor, t: int) -> torch.Tensor:
        if h.shape[1] != self.channels:
            raise ValueError(f"This f_t was made for h with {self.channels} channels; the model's h has {h.shape[1]}.")
        p = {k: v.to(h.device, h.dtype) for k, v in self.state_dict(keep_vars=True).items()
             if not k.startswith("time_embedding.")}
        self.time_embedding.check_timestep(t)
        temb = self.time_embedding(torch.full((1,), int(t), device=h.device)).to(h.dtype)
        x = F.conv2d(h, p["conv1.weight"], p["conv1.bias"])
        x = x + F.linear(F.silu(temb), p["temb_proj.weight"], p["temb_proj.bias"])[:, :, None, None]
        x = F.silu(F.group_norm(x, self.norm2.num_groups, p["norm2.weight"], p["norm2.bias"], self.norm2.eps))
        return F.conv2d(x, p["conv2.weight"], p["conv2.bias"])

    def tensors(self) -> dict:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, config: dict, tensors: dict) -> "ImplicitDirectionNet":
        te = config["time_embedding"]
        emb = TimeEmbedding(te["dim"], te["out_dim"], te["flip_sin_to_cos"], te["freq_shift"], hidden=te["hidden"],
                            table_size=te.get("table_size", 0))
        net = cls(config["channels"], emb)
        net.norm2 = nn.GroupNorm(config["groups"], config["channels"], eps=1e-6)
        net.load_state_dict(tensors)
        return net.requires_grad_(False)
