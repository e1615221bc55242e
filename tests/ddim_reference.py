"""Independent references for the library's DDIM code.

- A faithful transcription of the DDIM repo's ``Model`` (ermongroup/ddim, models/diffusion.py; MIT licence), the
  reference the checkpoint converter is tested against.  Not packaged on PyPI, so it lives here.
- ``reverse`` and ``invert``: the ᾱ-space loops (VP x_t over integer timesteps, ``ddim.ddim_step`` and
  ``ddim_inverse_step`` on ``HSpaceModel.predict``) that the library ran before its processes ran
  ``hspace_core.sampling``'s σ loops; the σ loops are tested against them (tests/test_sigma_loops.py).
"""
import math

import torch
import torch.nn as nn


def get_timestep_embedding(timesteps, embedding_dim):
    half_dim = embedding_dim // 2
    emb = math.log(10000) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -emb).to(timesteps.device)
    emb = timesteps.float()[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


def nonlinearity(x):
    return x * torch.sigmoid(x)


def Normalize(in_channels):
    return torch.nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, in_channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if self.with_conv:
            self.conv = torch.nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.with_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    def __init__(self, in_channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if self.with_conv:
            self.conv = torch.nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        if self.with_conv:
            x = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="constant", value=0)
            x = self.conv(x)
        else:
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2, stride=2)
        return x


class ResnetBlock(nn.Module):
    def __init__(self, *, in_channels, out_channels=None, conv_shortcut=False, dropout, temb_channels=512):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels)
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.temb_proj = torch.nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = torch.nn.Dropout(dropout)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if self.in_channels != self.out_channels:
            if self.use_conv_shortcut:
                self.conv_shortcut = torch.nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = torch.nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x, temb):
        h = x
        h = self.norm1(h)
        h = nonlinearity(h)
        h = self.conv1(h)
        h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.norm2(h)
        h = nonlinearity(h)
        h = self.dropout(h)
        h = self.conv2(h)
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.norm = Normalize(in_channels)
        self.q = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        k = k.reshape(b, c, h * w)
        w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
        w_ = torch.nn.functional.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        w_ = w_.permute(0, 2, 1)
        h_ = torch.bmm(v, w_).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Model(nn.Module):
    def __init__(self, ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                 in_channels=3, resolution=16, resamp_with_conv=True):
        super().__init__()
        self.ch, self.temb_ch = ch, ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([torch.nn.Linear(self.ch, self.temb_ch), torch.nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = torch.nn.Conv2d(in_channels, self.ch, kernel_size=3, stride=1, padding=1)
        curr_res = resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = None
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for i_block in range(self.num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=self.temb_ch,
                                         dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch, dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch, dropout=dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            skip_in = ch * ch_mult[i_level]
            for i_block in range(self.num_res_blocks + 1):
                if i_block == self.num_res_blocks:
                    skip_in = ch * in_ch_mult[i_level]
                block.append(ResnetBlock(in_channels=block_in + skip_in, out_channels=block_out,
                                         temb_channels=self.temb_ch, dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = torch.nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, x, t):
        temb = get_timestep_embedding(t, self.ch)
        temb = self.temb.dense[1](nonlinearity(self.temb.dense[0](temb)))
        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](hs[-1], temb)
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))
        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


# --- the ᾱ-space processes (the library's loops until issue 37) ---
def reverse(model, x_T, schedule, *, edit=None, edit_every=1, omega=None, asymmetric=True, seed=0, stop_below=0):
    """Asyrp's reverse process in ᾱ space over ``schedule``'s grid: (x0, [h_t of each step]); with ``stop_below``
    only the steps at t ≥ it (x0 is then the x_t reached)."""
    from hspace_core.ddim import calibrated_x_t, clipped_eps, ddim_sigma, ddim_step
    from hspace_core.sampling import strided
    from hspace_core.schedules import step_pairs

    generator = torch.Generator().manual_seed(int(seed))
    pairs = step_pairs(schedule.timesteps())
    actives = strided([edit is not None and schedule.edits_at(t) for t, _ in pairs], edit_every)
    x, hs = x_T.float(), []
    for (t, t_prev), active in zip(pairs, actives):
        if t < stop_below:
            break
        pred = model.predict(x, t, edit if active else None)
        hs.append(pred.h)
        a, a_prev = model.schedule.alpha_bar(t), model.schedule.alpha_bar(t_prev)
        clip = (lambda x_in, e: clipped_eps(x_in, e, a, schedule.clip_x0)) if schedule.clip_x0 else (lambda x_in, e: e)
        eps = clip(x, pred.eps)
        eps_edited = clip(x, pred.eps_edited) if pred.eps_edited is not None else None
        eta = schedule.eta_at(t)
        noise = None
        if ddim_sigma(a, a_prev, eta) > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        if not active:
            x = ddim_step(x, eps, a, a_prev, eta, noise)
        elif omega:
            x_cal = calibrated_x_t(x, eps, eps_edited, a, omega)
            x = ddim_step(x_cal, clip(x_cal, model.predict(x_cal, t).eps), a, a_prev, eta, noise)
        elif asymmetric:
            x = ddim_step(x, eps_edited, a, a_prev, eta, noise, eps_direction=eps)
        else:
            x = ddim_step(x, eps_edited, a, a_prev, eta, noise)
    return x, hs


def inversion_steps(grid_desc, convention):
    """(t_here, t_next, t at which ε is taken) for each inversion step, ascending; t_here = −1 is the clean input."""
    ascending = list(reversed(grid_desc))
    if convention == "diffusers":
        return [(here, nxt, nxt) for here, nxt in zip([-1, *ascending[:-1]], ascending)]
    first = [] if ascending[0] == 0 else [(-1, ascending[0], ascending[0])]
    return first + [(here, nxt, here) for here, nxt in zip(ascending[:-1], ascending[1:])]


def invert(model, x0, grid_desc, *, convention="seed", refine_iters=0):
    """Deterministic DDIM inversion in ᾱ space (DDIM §4.3): (x_T, [x_t after each step], {t: h of the last
    evaluation at t})."""
    from hspace_core.ddim import ddim_inverse_step

    x, latents, h_at = x0.float(), [], {}
    for t_here, t_next, t_eps in inversion_steps(grid_desc, convention):
        a_here, a_next = model.schedule.alpha_bar(t_here), model.schedule.alpha_bar(t_next)
        pred = model.predict(x, t_eps)
        h_at[t_eps] = pred.h
        x_next = ddim_inverse_step(x, pred.eps, a_here, a_next)
        for _ in range(refine_iters):
            pred = model.predict(x_next, t_next)
            h_at[t_next] = pred.h
            x_next = ddim_inverse_step(x, pred.eps, a_here, a_next)
        latents.append(x_next)
        x = x_next
    return x, latents, h_at
