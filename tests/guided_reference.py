"""A compact reference of openai's guided-diffusion / iDDPM ``UNetModel`` (Dhariwal & Nichol 2021, Appendix; openai/
guided-diffusion ``guided_diffusion/unet.py``), written from the published architecture so the checkpoint converter
can be tested against the original layout: same module tree, so the same state-dict keys, and the same forward
(GroupNorm(32) in float32, cos-first sinusoid, scale-shift norm, avg-pool / nearest resblock resampling, fused qkv
with the legacy or the "new" head split).  2-D only; no gradient checkpointing, no fp16.

Checked once against openai's own code as packaged on PyPI (guided-diffusion-sdk 1.0.0, ``guided_diffusion/unet.py``,
which differs from openai/guided-diffusion only in a gradient-checkpointing flag): same state-dict keys and
bit-identical outputs for every variant in tests/test_checkpoints_guided.py.  That package is not a dependency: an
unmaintained 2022 sdist whose top-level ``guided_diffusion`` would shadow users' own checkouts.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def norm(channels):
    return GroupNorm32(32, channels)


class Step(nn.Sequential):
    """TimestepEmbedSequential: passes the embedding to the ResBlocks."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels=None, scale_shift=False, up=False, down=False):
        super().__init__()
        out = out_channels or channels
        self.scale_shift, self.updown = scale_shift, up or down
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        if up:
            self.resample = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")
        elif down:
            self.resample = lambda x: F.avg_pool2d(x, kernel_size=2, stride=2)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(norm(out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.resample(self.in_layers[:-1](x))
            x = self.resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """``conv2d``: the projections as 1×1 Conv2d, (C, C, 1, 1) weights, as openai/consistency_models saves them."""

    def __init__(self, channels, num_heads=1, num_head_channels=-1, new_order=False, conv2d=False):
        super().__init__()
        self.heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order, self.conv2d = new_order, conv2d
        self.norm = norm(channels)
        conv = nn.Conv2d if conv2d else nn.Conv1d
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj_out = conv(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        if self.conv2d:
            qkv = self.qkv(self.norm(x)).reshape(b, 3 * c, -1)
            x = x.reshape(b, c, -1)
        else:
            x = x.reshape(b, c, -1)
            qkv = self.qkv(self.norm(x))
        n, length = self.heads, qkv.shape[-1]
        ch = c // n
        if self.new_order:  # QKVAttention: split q, k, v first, then heads
            q, k, v = (part.reshape(b * n, ch, length) for part in qkv.chunk(3, dim=1))
        else:  # QKVAttentionLegacy: split heads first, each head holding its own q, k, v
            q, k, v = qkv.reshape(b * n, 3 * ch, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        if self.conv2d:
            return x.reshape(b, c, *spatial) + self.proj_out(a.reshape(b, c, *spatial))
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """``attention_resolutions`` are downsample rates (1, 2, 4, …), as in the original.  Beyond it, the variants a
    consistency-models-style network adds: ``conv2d_attention`` (1×1 Conv2d projections) and ``label_dims`` (a
    continuous conditioning input: ``label_emb`` = Linear, SiLU, Linear, added to the time embedding)."""

    def __init__(self, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(2,),
                 channel_mult=(1, 2), num_classes=None, num_heads=1, num_head_channels=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False, conv2d_attention=False, label_dims=None):
        super().__init__()
        emb = 4 * model_channels
        self.model_channels, self.num_classes = model_channels, num_classes
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb)
        elif label_dims is not None:
            self.label_emb = nn.Sequential(nn.Linear(label_dims, emb), nn.SiLU(), nn.Linear(emb, emb))

        def res(c_in, c_out=None, **kw):
            return ResBlock(c_in, emb, c_out, use_scale_shift_norm, **kw)

        def attn(c):
            return AttentionBlock(c, num_heads, num_head_channels, use_new_attention_order, conv2d_attention)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([Step(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(Step(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Step(res(ch, down=True) if resblock_updown else Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Step(res(ch), attn(ch), res(ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, up=True) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Step(*layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))

    def forward(self, x, timesteps, y=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if hasattr(self, "label_emb"):
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
