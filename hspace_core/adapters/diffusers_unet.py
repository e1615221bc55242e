"""Adapter for diffusers ``UNet2DModel`` (pixel DDPMs) and ``UNet2DConditionModel`` (Stable Diffusion 1.x/2.x, SDXL).

h is the output of ``unet.mid_block`` (site "middle"), or of ``unet.up_blocks[k-1]`` for site "upk"
(``hspace_core.sites``).  When an edit is requested everything before h (conv_in, the down blocks and, at a decoder
site, the middle block and the earlier up blocks) runs once: for the edited pass their forwards are temporarily
replaced by the cached outputs and the site's block returns h̃, so only the time embedding and the rest of the
decoder run again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..schedules import NoiseSchedule, schedule_from_diffusers_config
from ..ddim import eps_from_model_output
from ..sites import DEFAULT_SITE, check_site, up_level
from .base import HEdit, Prediction, autograd_ready, edited_rows, fingerprint_of, guided, is_edited, take_rows


@dataclass(frozen=True)
class Conditioning:
    """Conditioning and classifier-free guidance for a ``UNet2DConditionModel`` or a class-conditional
    ``UNet2DModel``.

    ``positive`` / ``negative`` are encoder hidden states (B, tokens, dim) for a text U-Net, class embeddings
    (B, dim) for a class-conditional U-Net (``DiffusersUNet.class_embedding_of(labels)``).  ``negative_at`` maps a
    timestep to the negative used there (null-text inversion's per-step unconditional embeddings); other timesteps
    use ``negative``.  ``added_cond`` holds SDXL's ``text_embeds`` and ``time_ids`` as (negative, positive) pairs.
    With ``guidance_scale == 1`` only the positive branch runs.  ``edit_branches`` says which branch an h edit
    touches: cond, uncond or both.
    """

    positive: torch.Tensor
    negative: torch.Tensor | None = None
    guidance_scale: float = 1.0
    edit_branches: str = "cond"
    added_cond: dict = field(default_factory=dict)
    negative_at: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {self.guidance_scale}.")
        if self.guidance_scale != 1.0 and self.negative is None:
            raise ValueError("Classifier-free guidance (guidance_scale ≠ 1) needs negative conditioning.")
        for t, negative in [(None, self.negative), *self.negative_at.items()]:
            if negative is not None and negative.shape != self.positive.shape:
                where = "" if t is None else f" at t={t}"
                raise ValueError(f"Positive {tuple(self.positive.shape)} and negative{where} "
                                 f"{tuple(negative.shape)} conditioning differ in shape.")

    def negative_for(self, t: int) -> torch.Tensor | None:
        return self.negative_at.get(int(t), self.negative)

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale != 1.0


class DiffusersUNet:
    """``HSpaceModel`` over a diffusers U-Net.

    >>> model = DiffusersUNet(unet, schedule_from_diffusers_config(scheduler.config))
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule | dict | None = None,
                 conditioning: Conditioning | None = None, class_labels: torch.Tensor | None = None,
                 reuse_encoder: bool = True, site: str = DEFAULT_SITE):
        if getattr(unet, "mid_block", None) is None:
            raise ValueError(
                f"{type(unet).__name__} has no middle block (mid_block is None), so it has no h-space. "
                "Use a U-Net with a mid block: diffusers UNet2DModel or UNet2DConditionModel "
                "(pixel DDPMs, Stable Diffusion 1.x/2.x, SDXL). Transformers (DiT, SD3, Flux) are not supported."
            )
        if schedule is None:
            schedule = NoiseSchedule(_default_alphas(), "epsilon")
        elif isinstance(schedule, dict):
            schedule = schedule_from_diffusers_config(schedule)
        site_module(unet, site)  # refuses a site this U-Net does not have
        self.unet = unet
        self.site = site
        self.schedule = schedule
        self.conditioning = conditioning
        self.class_labels = class_labels
        self.reuse_encoder = reuse_encoder
        self.is_conditional = dict(unet.config).get("cross_attention_dim") is not None
        self.is_class_conditional = not self.is_conditional and getattr(unet, "class_embedding", None) is not None
        if self.is_conditional and conditioning is None:
            raise ValueError(f"{type(unet).__name__} is text-conditioned: pass conditioning=Conditioning(positive=...).")
        if self.is_class_conditional and conditioning is None and class_labels is None:
            raise ValueError(f"{type(unet).__name__} is class-conditional: pass class_labels=, or conditioning="
                             "Conditioning(positive=model.class_embedding_of(labels), ...) for guidance.")
        self.branches = ("uncond", "cond") if conditioning is not None and conditioning.uses_guidance else ("single",)
        self._fingerprint = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            arch = {"class": type(self.unet).__name__, **{k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}}
            self._fingerprint = fingerprint_of(arch, self.unet.parameters())
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def class_embedding_of(self, labels) -> torch.Tensor:
        """The class embeddings (B, dim) of integer labels: what ``Conditioning`` holds for a class U-Net."""
        if not self.is_class_conditional:
            raise ValueError(f"{type(self.unet).__name__} has no class embedding; it is not class-conditional.")
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device).reshape(-1)
        with torch.no_grad():
            return self.unet.class_embedding(labels).float().cpu()

    def with_conditioning(self, conditioning: Conditioning | None) -> "DiffusersUNet":
        other = DiffusersUNet(self.unet, self.schedule, conditioning, self.class_labels, self.reuse_encoder, self.site)
        other._fingerprint = self._fingerprint  # same weights
        return other

    def with_site(self, site: str) -> "DiffusersUNet":
        """The same U-Net with h read (and edited) at another site (``hspace_core.sites``)."""
        other = DiffusersUNet(self.unet, self.schedule, self.conditioning, self.class_labels, self.reuse_encoder, site)
        other._fingerprint = self._fingerprint
        return other

    # --- guidance (``adapters.base.GuidedModel``): what guided inversion needs ---
    @property
    def guidance_scale(self) -> float:
        return self.conditioning.guidance_scale if self.conditioning is not None else 1.0

    def with_guidance(self, scale: float) -> "DiffusersUNet":
        return self.with_conditioning(dataclasses.replace(self._guided_conditioning(), guidance_scale=float(scale)))

    def negative_embedding(self) -> torch.Tensor:
        return self._guided_conditioning().negative.detach().clone()

    def with_negative(self, negative) -> "DiffusersUNet":
        """``"positive"``: the positive conditioning is the negative too; a tensor: this negative embedding; a dict
        {t: tensor}: per-step negatives (other steps keep the current negative)."""
        c = self._guided_conditioning()
        if isinstance(negative, str) and negative == "positive":
            added = {k: (v[1], v[1]) for k, v in c.added_cond.items()}
            return self.with_conditioning(dataclasses.replace(c, negative=c.positive, negative_at={}, added_cond=added))
        if isinstance(negative, dict):
            return self.with_conditioning(dataclasses.replace(c, negative_at=dict(negative)))
        return self.with_conditioning(dataclasses.replace(c, negative=negative, negative_at={}))

    def _guided_conditioning(self) -> Conditioning:
        if self.conditioning is None or self.conditioning.negative is None:
            raise ValueError("This model has no negative conditioning: give Conditioning(positive=..., negative=..., "
                             "guidance_scale=...) for guided inversion.")
        return self.conditioning

    def time_embedding(self):
        """A frozen copy of the U-Net's timestep embedding (for implicit directions f_t)."""
        from ..implicit import TimeEmbedding

        return TimeEmbedding.of_diffusers_unet(self.unet)

    def autograd_ready(self):
        return autograd_ready(self.unet)

    def predict(self, x_t: torch.Tensor, t: int, edit: HEdit | None = None) -> Prediction:
        x_in, kwargs = self._inputs(x_t, t)
        timestep = torch.full((x_in.shape[0],), max(int(t), 0), device=self.device, dtype=torch.long)
        with capture_pass(self.unet, self.reuse_encoder and edit is not None, self.site) as cache:
            out = self._run(x_in, timestep, kwargs)
        h = cache.h
        eps = self._to_eps(out, x_t, t)
        if edit is None:
            return Prediction(eps, h)
        edit_branches = self.conditioning.edit_branches if self.conditioning is not None else "both"
        # same memory layout as h, so an unchanged h takes the same kernels and gives bit-identical ε
        h_edited = torch.empty_like(h).copy_(edited_rows(h, t, self.branches, edit, edit_branches))
        rows = self._edited_row_indices(x_in.shape[0], edit_branches)
        if rows is None:
            with replay_pass(self.unet, cache if self.reuse_encoder else None, h_edited, self.site):
                out_edited = self._run(x_in, timestep, kwargs)
        else:  # under guidance with one branch edited, only that branch's decoder rows run again
            n = x_in.shape[0]
            with replay_pass(self.unet, cache.rows(rows, n), h_edited[rows], self.site):
                out_rows = self._run(x_in[rows], timestep[rows], take_rows(kwargs, rows, n))
            out_edited = out.clone()
            out_edited[rows] = out_rows.to(out_edited.dtype)
        return Prediction(eps, h, self._to_eps(out_edited, x_t, t))

    def _edited_row_indices(self, batch: int, edit_branches: str) -> torch.Tensor | None:
        """The rows (branch-major) whose h an edit changes, when that is fewer than all and the encoder is cached."""
        if not self.reuse_encoder or len(self.branches) < 2:
            return None
        chosen = [k for k, b in enumerate(self.branches) if is_edited(b, edit_branches)]
        if len(chosen) == len(self.branches):
            return None
        per = batch // len(self.branches)
        return torch.cat([torch.arange(k * per, (k + 1) * per) for k in chosen]).to(self.device)

    def _run(self, x_in, timestep, kwargs) -> torch.Tensor:
        kwargs = dict(kwargs)
        class_rows = kwargs.pop("class_rows", None)
        with _class_embedding_rows(self.unet, class_rows):
            return self.unet(x_in.to(self.device, self.dtype), timestep, return_dict=False, **kwargs)[0]

    def _inputs(self, x_t: torch.Tensor, t: int):
        c = self.conditioning
        kwargs = {}
        if self.class_labels is not None:
            kwargs["class_labels"] = self.class_labels
        if c is None:
            return x_t, kwargs
        batch = x_t.shape[0]
        if c.uses_guidance:
            x_in = torch.cat([x_t, x_t])
            states = torch.cat([_repeat_to(c.negative_for(t), batch), _repeat_to(c.positive, batch)])
            added = {k: torch.cat([_repeat_to(v[0], batch), _repeat_to(v[1], batch)]) for k, v in c.added_cond.items()}
        else:
            x_in, states = x_t, _repeat_to(c.positive, batch)
            added = {k: _repeat_to(v[1], batch) for k, v in c.added_cond.items()}
        if self.is_class_conditional:  # the embeddings replace the class embedding's output, row for row
            kwargs["class_labels"] = torch.zeros(x_in.shape[0], dtype=torch.long, device=self.device)
            kwargs["class_rows"] = states.to(self.device, self.dtype)
            return x_in, kwargs
        kwargs["encoder_hidden_states"] = states.to(self.device, self.dtype)
        if added:
            kwargs["added_cond_kwargs"] = {k: v.to(self.device, self.dtype) for k, v in added.items()}
        return x_in, kwargs

    def _to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        out = out.to(x_t.dtype)
        if out.shape[1] == 2 * x_t.shape[1]:  # learnt variance (improved DDPM): keep the mean part
            out = out[:, : x_t.shape[1]]
        scale = self.conditioning.guidance_scale if self.conditioning is not None else 1.0
        out = guided(out, self.branches, scale)
        return eps_from_model_output(out, x_t, self.schedule.alpha_bar(max(t, 0)), self.schedule.prediction_type)


@contextlib.contextmanager
def _class_embedding_rows(unet, rows: torch.Tensor | None):
    """During one forward, the class embedding returns ``rows`` (B, dim) whatever labels it gets."""
    if rows is None:
        yield
        return
    with forwards_replaced() as replace:
        replace(unet.class_embedding, lambda labels: rows)
        yield


def _repeat_to(x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"Conditioning has batch {x.shape[0]} but the latents have {batch}: give one conditioning, "
                         f"or one per latent ({batch}).")
    return x.expand(batch, *x.shape[1:])


def _default_alphas() -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)


def site_module(unet, site: str) -> torch.nn.Module:
    """The block whose output is h at ``site``: ``mid_block``, or ``up_blocks[k-1]`` for "upk"; a site past the
    second-to-last up block (whose output is the decoder's last features, not h) is refused."""
    level = up_level(check_site(site))
    if level == 0:
        return unet.mid_block
    ups = len(unet.up_blocks)
    if level > ups - 1:
        raise ValueError(f"This U-Net has {ups} up blocks, so it has no h site {site!r}; use middle"
                         f"{''.join(f', up{k}' for k in range(1, ups))}.")
    return unet.up_blocks[level - 1]


def _modules_before(unet, site: str) -> tuple:
    """The modules whose outputs a forward computes before h at ``site`` (and that an edit does not change)."""
    level = up_level(site)
    return (unet.conv_in, *unet.down_blocks, *((unet.mid_block, *unet.up_blocks[: level - 1]) if level else ()))


class EncoderCache:
    """h and the outputs of the modules before h of one forward (``output`` is the site block's whole output)."""

    def __init__(self, h=None, outputs=None, output=None):
        self.h = h
        self.outputs = {} if outputs is None else outputs
        self.output = output

    def rows(self, rows: torch.Tensor, batch: int) -> "EncoderCache":
        """The cache of some rows of a ``batch``-row forward."""
        return EncoderCache(take_rows(self.h, rows, batch), take_rows(self.outputs, rows, batch),
                            take_rows(self.output, rows, batch))


@contextlib.contextmanager
def capture_pass(unet, keep_encoder: bool, site: str = DEFAULT_SITE):
    """Record h at ``site`` (and, if asked, the outputs of the modules before it) during one forward; hooks always
    come off."""
    cache = EncoderCache()
    handles = []

    def keep_h(module, args, output):
        # a copy: a patch after this hook (FreeU's, in the pixel wrapper) may change the output in place
        cache.h = (output if torch.is_tensor(output) else output[0]).detach().clone()
        cache.output = output

    def keeper(module, args, output):
        cache.outputs[module] = output

    try:
        handles.append(site_module(unet, site).register_forward_hook(keep_h))
        if keep_encoder:
            for module in _modules_before(unet, site):
                handles.append(module.register_forward_hook(keeper))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
    if cache.h is None:
        raise RuntimeError(f"The U-Net's h block (site {site!r}) did not run; this model's forward bypasses it.")


@contextlib.contextmanager
def replay_pass(unet, cache: EncoderCache | None, h_edited: torch.Tensor, site: str = DEFAULT_SITE):
    """Make the next forward use ``h_edited`` as h at ``site`` (and the cached modules before it, if given).

    Instance attributes shadow the class's ``forward``; afterwards each module's previous forward is back.
    """
    with forwards_replaced() as replace:
        if cache is not None:
            for module, output in cache.outputs.items():
                replace(module, (lambda out: (lambda *a, **k: out))(output))
        h = h_edited.to(next(unet.parameters()).dtype)
        block = site_module(unet, site)
        rest = () if cache is None or cache.output is None or torch.is_tensor(cache.output) else tuple(cache.output[1:])
        if rest:  # a block returning (h, skip…) (AttnSkipUpBlock2D): only h is replaced
            replace(block, lambda *a, **k: (h, *rest))
        elif cache is None and site != DEFAULT_SITE:  # the block runs; its output's first element becomes h̃
            replace(block, _replacing_first(block.forward, h))
        else:
            replace(block, lambda *a, **k: h)
        yield


_NO_FORWARD = object()


@contextlib.contextmanager
def forwards_replaced():
    """``replace(module, forward)`` for the duration: on exit each module gets back the forward it had before — an
    instance attribute installed by someone else (accelerate's offloading, diffusers' hooks) or none (the class's),
    as diffusers' ``HookRegistry`` restores it — whatever happens."""
    saved = []

    def replace(module: torch.nn.Module, forward) -> None:
        saved.append((module, module.__dict__.get("forward", _NO_FORWARD)))
        module.forward = forward

    try:
        yield replace
    finally:
        for module, previous in reversed(saved):
            if previous is _NO_FORWARD:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


def _replacing_first(original, h: torch.Tensor):
    """A forward that runs ``original`` (the block's forward until now) and returns ``h`` in place of its output (or
    of its output's first element)."""

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        return h if torch.is_tensor(out) else (h, *out[1:])

    return forward
