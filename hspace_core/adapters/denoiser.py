"""Adapter for any denoiser D(x, σ): EDM / k-diffusion / VE models that predict x0, or ε(x, σ) predictors.

The processes call it in the VE convention x = x0 + σ·ε (``denoised``, the σ view ``hs.denoise_at`` uses);
``predict`` is the VP view x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (x = x_t/√ᾱ, ε = (x − D(x, σ))/σ, ``hspace_core.sigmas``).
h is the output of a module the caller names; an edit replaces it through a forward hook that returns h̃, and the
edited pass runs the whole network again (no encoder reuse).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..noise_levels import NoiseLevels
from ..schedules import NoiseSchedule, schedule_from_sigmas
from ..sigmas import eps_of_denoised, vp_to_ve
from ..sites import DEFAULT_SITE, check_site
from .base import HEdit, Prediction, autograd_ready, edited_rows, fingerprint_of

OUTPUTS = ("x0", "eps")


class Denoiser:
    """``HSpaceModel`` over a callable ``fn(x, sigma)`` (``sigma`` a (B,) tensor on x's device).

    - ``output="x0"``: fn returns D(x, σ) ≈ x0 (EDM, k-diffusion denoisers); ``"eps"``: fn returns ε(x, σ).
    - ``sigmas``: σ_t for t = 0 … T−1, increasing (for a continuous-σ model, any table that covers its range,
      e.g. the VP σ table it was distilled from or ``torch.exp(torch.linspace(log σ_min, log σ_max, 1000))``), or
      a ``NoiseSchedule``.
    - ``h_module``: the module whose output is h (a module, or its name inside ``fn`` when fn is an nn.Module).  A
      module returning a tuple has h as its first element.
    - ``fingerprint``: defaults to ``fingerprint_of`` the weights of ``fn`` when it is an nn.Module; give one
      otherwise (e.g. ``fingerprint_of({"name": "my-model"}, state_dict)``).
    - ``site``: which block ``h_module`` is in the site vocabulary (``hspace_core.sites``): "middle" for the
      bottleneck, "upk" for the output of the k-th decoder level; trajectories and directions carry it.
    """

    branches = ("single",)

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sigmas, h_module, *,
                 output: str = "x0", fingerprint: str | None = None, site: str = DEFAULT_SITE):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS} (what fn returns), got {output!r}.")
        self.fn = fn
        self.output = output
        self.site = check_site(site)
        self.schedule = sigmas if isinstance(sigmas, NoiseSchedule) else schedule_from_sigmas(sigmas)
        self.h_module = self._resolve(fn, h_module)
        if fingerprint is None:
            if not isinstance(fn, torch.nn.Module):
                raise ValueError("fn is not an nn.Module, so its weights cannot be fingerprinted: pass fingerprint= "
                                 "(e.g. hspace_core.fingerprint_of({'name': ...}, state_dict)).")
            arch = {"class": type(fn).__name__, "output": output, "h": type(self.h_module).__name__}
            fingerprint = fingerprint_of(arch, fn.state_dict())
        self.fingerprint = fingerprint

    @staticmethod
    def _resolve(fn, h_module) -> torch.nn.Module:
        if isinstance(h_module, torch.nn.Module):
            return h_module
        if isinstance(h_module, str) and isinstance(fn, torch.nn.Module):
            try:
                return fn.get_submodule(h_module)
            except AttributeError:
                raise ValueError(f"fn has no submodule {h_module!r}; name the module whose output is h "
                                 "(see fn.named_modules()).") from None
        raise ValueError(f"h_module must be the nn.Module whose output is h (or its name inside fn), got {h_module!r}.")

    def autograd_ready(self):
        return autograd_ready(self.fn) if isinstance(self.fn, torch.nn.Module) else contextlib.nullcontext()

    def eps(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """ε(x_t, t) with the VP ↔ VE conversion (module docstring); no hooks."""
        sigma, x = self.schedule.sigma(t), vp_to_ve(x_t, self.schedule.alpha_bar(t))
        return eps_of_denoised(x, self._denoised(x, sigma), sigma).to(x_t.dtype)

    @property
    def levels(self) -> NoiseLevels:
        return NoiseLevels.of_schedule(self.schedule)

    def denoised(self, x: torch.Tensor, sigma, edit: HEdit | None = None, t: int | None = None) -> tuple:
        """(D(x | h), D(x | h̃) or None, h) at x = x0 + σ·ε with fn called at σ itself (``hs.denoise_at``'s shape:
        a σ-space denoiser needs no VP round trip); ``t``, where the edit is looked up, is the timestep nearest σ
        unless given."""
        t = self.levels.timestep(float(sigma)) if t is None else t
        with _hooked(self.h_module, None) as seen:
            plain = self._denoised(x, sigma)
        if "h" not in seen:
            raise RuntimeError(f"The h module ({type(self.h_module).__name__}) did not run during fn(x, σ).")
        h = seen["h"]
        if edit is None:
            return plain, None, h
        h_edited = edited_rows(h, t, self.branches, edit, "both")
        with _hooked(self.h_module, h_edited):
            return plain, self._denoised(x, sigma), h

    def predict(self, x_t: torch.Tensor, t: int, edit: HEdit | None = None) -> Prediction:
        """The VP view of ``denoised``: x = x_t/√ᾱ_t, ε = (x − D)/σ_t."""
        if t < 0:
            raise ValueError(f"predict takes a timestep in [0, {self.schedule.num_train_timesteps - 1}], got {t}.")
        sigma, x = self.schedule.sigma(t), vp_to_ve(x_t, self.schedule.alpha_bar(t))
        plain, edited, h = self.denoised(x, sigma, edit, t)
        eps = lambda d: eps_of_denoised(x, d, sigma).to(x_t.dtype)  # noqa: E731
        return Prediction(eps(plain), h, None if edited is None else eps(edited))

    def _denoised(self, x: torch.Tensor, sigma) -> torch.Tensor:
        out = self.fn(x, x.new_ones((x.shape[0],)) * sigma)
        return out if self.output == "x0" else x - sigma * out


@contextlib.contextmanager
def _hooked(module: torch.nn.Module, replacement: torch.Tensor | None):
    """During the block, record the module's output h in the yielded dict, or (``replacement`` given) return
    ``replacement`` in its place; the hook always comes off."""
    seen = {}

    def hook(mod, args, output):
        first = output if torch.is_tensor(output) else output[0]
        seen["h"] = first.detach()
        if replacement is None:
            return None
        new = replacement.to(first.device, first.dtype)
        return new if torch.is_tensor(output) else (new, *output[1:])

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
