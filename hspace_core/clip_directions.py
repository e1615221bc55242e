"""Learning Asyrp directions from a text pair with a CLIP directional loss (Kwon et al. 2023, §3.2 and §4).

For each training image, from its inverted x_T down to t_edit, one optimiser step per timestep on a detached x_t:

    L = λ_CLIP·L_direction(P_t^edit, y_target; x_ref, y_source) + λ_recon·cos(y_source, y_target)·|P_t^edit − P_t^source|

with L_direction = 1 − cos(ΔI, ΔT) (DiffusionCLIP / StyleGAN-NADA), ΔI = E_I(P_t^edit) − E_I(x_ref) and
ΔT = E_T(y_target) − E_T(y_source) averaged over prompt templates.  P_t^edit is the predicted x0 from ε(x_t | h_t + Δh),
P_t^source the one along the unedited DDIM trajectory from the same x_T; x_t follows the asymmetric edited
process.  The official code feeds CLIP the input image as x_ref and uses −log((2 − L_direction)/2); both are the
defaults here and both can be switched to the paper's P_t^source and plain L_direction.
"""
from __future__ import annotations

import contextlib
import dataclasses

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .adapters.base import HSpaceModel, denoise_at, levels_of
from .implicit import ImplicitDirectionNet
from .schedules import step_pairs, timestep_grid
from .sites import site_of
from .direction import Direction
from .settings import EditSchedule, t_edit_label
from .progress import StepLoop, check_batch
from .auto_schedule import find_t_edit_t_boost
from .processes import invert, run_reverse
from .sampling import asymmetric_step
from .trajectory import HStorage

# Our own short template set; the text direction is the mean over templates (StyleGAN-NADA's recipe).
TEMPLATES = (
    "{}.", "a photo of {}.", "a picture of {}.", "an image of {}.", "a close-up photo of {}.",
    "a cropped photo of {}.", "a good photo of {}.", "a rendering of {}.",
)
FORMS = ("global", "per_timestep", "implicit")


class CLIPDirectional:
    """open_clip model + tokenizer, with the directional loss and text similarities used for Asyrp training.

    Images are in [-1, 1], any size (resized to the model's input size, normalised with its mean/std).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 templates: Sequence[str] = TEMPLATES):
        import open_clip

        visual = model.visual
        size = image_size or getattr(visual, "image_size", 224)
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        pre = getattr(visual, "preprocess_cfg", {}) or {}
        with torch.inference_mode(False):  # autograd must be able to save them, even when built in a ComfyUI node
            self.mean = torch.tensor(mean or pre.get("mean") or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
            self.std = torch.tensor(std or pre.get("std") or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self.model, self.tokenizer, self.templates = model.eval().requires_grad_(False), tokenizer, tuple(templates)
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("Every prompt template needs a '{}' where the text goes, e.g. 'a photo of {}.'.")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def text_features(self, text: str) -> torch.Tensor:
        """Mean over templates of the normalised text embeddings, normalised: (1, D)."""
        if not text.strip():
            raise ValueError("The source and target texts must not be empty (e.g. 'face' → 'smiling face').")
        with torch.no_grad():
            tokens = self.tokenizer([t.format(text) for t in self.templates]).to(self.device)
            feats = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return F.normalize(feats.mean(0, keepdim=True), dim=-1)

    def text_direction(self, source: str, target: str) -> torch.Tensor:
        """ΔT = normalise(E_T(target) − E_T(source))."""
        return F.normalize(self.text_features(target) - self.text_features(source), dim=-1)

    def text_cosine(self, source: str, target: str) -> float:
        """cos(E_T(source), E_T(target)); Asyrp scales the LPIPS t_edit threshold and the recon weight by it."""
        return float((self.text_features(source) * self.text_features(target)).sum())

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings of images in [-1, 1] (differentiable)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP needs RGB images (B, 3, H, W) in [-1, 1]; got {tuple(images.shape)}. For a latent "
                             "model pass decode= (the VAE) so predictions are decoded first.")
        x = F.interpolate(images.float().to(self.device), size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False, antialias=True)
        x = ((x + 1) / 2 - self.mean.to(x.device)) / self.std.to(x.device)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    def directional_loss(self, reference: torch.Tensor, edited: torch.Tensor, text_dir: torch.Tensor) -> torch.Tensor:
        """1 − cos(ΔI, ΔT) per image, ΔI = E_I(edited) − E_I(reference)."""
        with torch.no_grad():
            ref = self.image_features(reference)
        delta = F.normalize(self.image_features(edited) - ref, dim=-1, eps=1e-8)
        return 1 - (delta * text_dir.to(delta.device)).sum(-1)

    def text_score(self, images: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """cos(E_I(x), E_T(target)) − cos(E_I(x), E_T(source)) per image: > 0 leans to the target text."""
        with torch.no_grad():
            f = self.image_features(images)
            return (f * self.text_features(target).to(f.device)).sum(-1) - (f * self.text_features(source).to(f.device)).sum(-1)


def load_open_clip(model_name: str = "ViT-B-16", pretrained: str | None = "openai", device="cpu",
                   templates: Sequence[str] = TEMPLATES) -> CLIPDirectional:
    """An open_clip model by name with pretrained weights (a tag such as 'openai' or a local checkpoint file;
    downloaded once on first use).  ``pretrained=None`` gives random weights — only for tests."""
    import open_clip

    with torch.inference_mode(False):
        model = open_clip.create_model(model_name, pretrained=pretrained or None, device=device)
        return CLIPDirectional(model, open_clip.get_tokenizer(model_name), templates=templates)


@dataclass(frozen=True)
class DirectionTraining:
    """Every knob of Asyrp's direction training; defaults follow the official scripts (CelebA-HQ)."""

    form: str = "implicit"
    num_steps: int = 40  # DDIM steps over [0, 999] while training (the official n_train_step)
    inversion_steps: int = 40
    t_edit: int | None = None  # None: Asyrp's LPIPS rule, threshold 0.33 scaled by the text cosine
    # a percent window's timesteps of the training grid (contiguous), replacing t ≥ t_edit: the steps above it are
    # run plainly (nothing is trained there), once per image
    edit_timesteps: tuple[int, ...] | None = None
    made_with: str = ""  # how edit_timesteps' window was given (e.g. "percent 0.00–0.60"), for the direction's record
    num_train_timesteps: int = 1000  # the model's σ table (t_edit and edit_timesteps index it; Flux's has 10000)
    epochs: int = 1  # passes over the training images (n_iter)
    batch_size: int = 1
    lr: float = 0.5
    lr_step_epochs: int = 3  # StepLR step size, in epochs
    lr_gamma: float = 0.1
    clip_weight: float = 1.0
    recon_weight: float = 3.0
    clip_reference: str = "source_prediction"  # P_t^source (the paper) or "input": the input image (official code)
    log_clip_loss: bool = True  # −log((2 − L)/2) as the official code; False: L = 1 − cos
    init_scale: float = 0.2  # Δh starts ~ init_scale·N(0, 1) (official); f_t's conv2 ~ N(0, init_scale²/C)
    seed: int = 0

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}.")
        if self.clip_reference not in ("input", "source_prediction"):
            raise ValueError("clip_reference must be 'input' or 'source_prediction'.")
        if self.clip_reference == "source_prediction" and self.init_scale <= 0:
            raise ValueError("With clip_reference='source_prediction' a zero initial Δh gives ΔI = 0 (no CLIP "
                             "gradient); set init_scale > 0 (the official code uses 0.2).")
        for name in ("num_steps", "inversion_steps", "batch_size", "lr_step_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.epochs < 0:
            raise ValueError(f"epochs must be ≥ 0, got {self.epochs}.")
        if self.lr <= 0 or self.clip_weight < 0 or self.recon_weight < 0:
            raise ValueError("lr must be > 0 and the loss weights ≥ 0.")
        T = self.num_train_timesteps
        if self.t_edit is not None and not 0 <= self.t_edit <= T - 1:
            raise ValueError(f"t_edit must be in [0, {T - 1}], got {self.t_edit}.")
        if self.edit_timesteps is not None:
            object.__setattr__(self, "edit_timesteps", tuple(int(t) for t in self.edit_timesteps))
            grid = timestep_grid(self.num_steps, T, "asyrp")
            inside = [k for k, t in enumerate(grid) if t in self.edit_timesteps]
            if not inside or len(inside) != len(self.edit_timesteps) or inside != list(range(inside[0], inside[-1] + 1)):
                raise ValueError(f"edit_timesteps {self.edit_timesteps} are not consecutive steps of the "
                                 f"{self.num_steps}-step training grid.")


@dataclass(frozen=True)
class TrainedDirection:
    direction: Direction
    losses: tuple[float, ...]  # one per optimiser step
    clip_losses: tuple[float, ...]
    t_edit: int
    text_cosine: float
    seconds_per_step: float = 0.0
    timesteps: tuple[int, ...] = field(default=())


def _parameters_for(form: str, model: HSpaceModel, h_shape: tuple[int, ...], timesteps, init_scale: float,
                    generator: torch.Generator):
    """The trainable object of each form and a function Δh(h, t) over it.  ``init_scale`` = 0 gives Δh ≡ 0."""
    if form == "implicit":
        if not hasattr(model, "time_embedding"):
            raise ValueError(f"{type(model).__name__} exposes no time embedding; implicit f_t needs one "
                             "(use the global or per_timestep form).")
        with torch.random.fork_rng(devices=[]):  # nn init draws from the global RNG: seed it, then restore it
            torch.manual_seed(generator.initial_seed())
            net = ImplicitDirectionNet(h_shape[0], model.time_embedding(), zero_init=True)
        with torch.no_grad():
            net.conv2.weight.copy_(torch.randn(net.conv2.weight.shape, generator=generator) * init_scale / h_shape[0] ** 0.5)
        return net, list(p for n, p in net.named_parameters() if not n.startswith("time_embedding")), net
    shape = h_shape if form == "global" else (len(timesteps), *h_shape)
    delta = torch.nn.Parameter(torch.randn(shape, generator=generator) * init_scale)
    if form == "global":
        return delta, [delta], lambda h, t: delta.to(h)[None]
    index = {t: i for i, t in enumerate(timesteps)}
    return delta, [delta], lambda h, t: delta[index[t]].to(h)[None]


def _direction_of(form: str, trained, timesteps, h_shape, model: HSpaceModel, meta: dict, name: str) -> Direction:
    if form == "implicit":
        return Direction("implicit", fn=trained.requires_grad_(False), h_shape=h_shape, fingerprint=model.fingerprint,
                         name=name, metadata=meta, site=site_of(model))
    delta = trained.detach().clone()
    return Direction(form, delta, tuple(timesteps) if form == "per_timestep" else (), fingerprint=model.fingerprint,
                     name=name, metadata=meta, site=site_of(model))


def train_direction(model: HSpaceModel, images: torch.Tensor, clip: CLIPDirectional, source_text: str,
                    target_text: str, config: DirectionTraining = DirectionTraining(), *,
                    latents: torch.Tensor | None = None, decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    distance=None, progress=None, should_stop=None,
                    on_gradients: Callable[[list], None] | None = None) -> TrainedDirection:
    """Learn a direction (global Δh, per-timestep Δh_t or implicit f_t) moving images from ``source_text`` to
    ``target_text``.

    ``images`` are the training images in [-1, 1] (what CLIP sees); ``latents`` the model-space tensors to invert
    (the VAE encodings for a latent model; defaults to ``images``) and ``decode`` maps model space to images
    (differentiably).  ``distance`` (LPIPS) is only used when ``config.t_edit`` is None.
    Gradients are enabled here even when called under ``torch.inference_mode``.  ``on_gradients(params)`` is called
    after each backward pass, before the optimiser step (data-parallel training averages the gradients there).
    """
    import time

    latents = images if latents is None else latents
    check_batch(latents, "The training latents")
    if images.shape[0] != latents.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {latents.shape[0]} latents; pass one latent per image.")
    decode = decode or (lambda x: x)
    T = model.schedule.num_train_timesteps
    levels = levels_of(model)
    with torch.inference_mode(False):
        images, latents = images.detach().clone(), latents.detach().clone()
        cosine = clip.text_cosine(source_text, target_text)
        text_dir = clip.text_direction(source_text, target_text)
        t_edit = config.t_edit if config.edit_timesteps is None else min(config.edit_timesteps)
        if t_edit is None:
            t_edit = find_t_edit_t_boost(model, latents, distance=distance, decode=decode, text_cosine=cosine,
                                         should_stop=should_stop).t_edit
        grid = timestep_grid(config.num_steps, T, "asyrp")
        pairs = [(t, s) for t, s in step_pairs(grid) if t >= t_edit]
        before = [] if config.edit_timesteps is None else [(t, s) for t, s in pairs if t not in config.edit_timesteps]
        pairs = pairs[len(before):]
        if not pairs:
            raise ValueError(f"No training timestep is ≥ t_edit ({t_edit}); lower t_edit or use more steps.")
        train_ts = [t for t, _ in pairs]
        n_batches = -(-images.shape[0] // config.batch_size)
        loop = StepLoop(n_batches * (1 + len(before) + config.epochs * len(pairs)), progress, should_stop)
        with torch.no_grad():
            inversions, x_T = [], []
            for b in range(n_batches):
                chunk = latents[b * config.batch_size:(b + 1) * config.batch_size]
                inversions.append(invert(model, chunk, config.inversion_steps, report=False, should_stop=should_stop,
                                         progress=loop.previews()))
                loop.tick()
                x = inversions[-1].x_T
                if before:  # down to the window's start: the plain process, the same every epoch
                    x = run_reverse(model, x, EditSchedule.reconstruction(config.num_steps, "asyrp", T),
                                    h_storage=HStorage(t_min=pairs[0][0] + 1), h_only=True, progress=loop.sub()).x0
                x_T.append(x * levels.unit_scale(levels.sigma(pairs[0][0])))  # the model's point (the σ loop's)
        h_shape = inversions[0].trajectory.h_shape
        generator = torch.Generator().manual_seed(int(config.seed))
        init_scale = config.init_scale if config.epochs > 0 else 0.0  # nothing learnt: the identity direction
        trained, params, delta_fn = _parameters_for(config.form, model, h_shape, train_ts, init_scale, generator)
        optimizer = torch.optim.SGD(params, lr=config.lr, weight_decay=0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma)
        shift = lambda h, t, branch: h + delta_fn(h, t)
        losses, clip_losses, started = [], [], time.perf_counter()
        ready = getattr(model, "autograd_ready", contextlib.nullcontext)
        with torch.enable_grad(), ready():
            for _ in range(config.epochs):
                for b in range(n_batches):
                    reference = images[b * config.batch_size:(b + 1) * config.batch_size]
                    x_edit = x_src = x_T[b]
                    for t, t_prev in pairs:  # the σ view and Asyrp's asymmetric step (``sampling``)
                        loop.tick()
                        sigma, sigma_prev = levels.sigma(t), (levels.sigma(t_prev) if t_prev >= 0 else 0.0)
                        optimizer.zero_grad(set_to_none=True)
                        plain, p_edit, _ = denoise_at(model, x_edit.detach(), sigma, shift, t=t)  # P_t of h̃
                        with torch.no_grad():
                            p_src = denoise_at(model, x_src, sigma, t=t)[0]
                            signal = levels.signal(sigma_prev)  # a(σ_prev): 1, or 1 − σ_prev on flow matching
                            x_src = asymmetric_step(x_src, p_src, p_src, sigma, sigma_prev, signal)
                            x_edit = asymmetric_step(x_edit, p_edit.detach(), plain, sigma, sigma_prev, signal)
                        loop.show(p_edit.detach())  # the edit it trains on (P_t of the edited h)
                        edited_image = decode(p_edit)
                        ref = reference if config.clip_reference == "input" else decode(p_src).detach()
                        clip_loss = clip.directional_loss(ref, edited_image, text_dir).mean()
                        clip_term = -torch.log((2 - clip_loss) / 2) if config.log_clip_loss else clip_loss
                        recon = (p_edit - p_src).abs().mean()
                        loss = config.clip_weight * clip_term + config.recon_weight * cosine * recon
                        if not torch.isfinite(loss):
                            raise ValueError(f"The training loss became {float(loss)} at t={t}; lower lr.")
                        loss.backward()
                        if on_gradients is not None:  # e.g. averaged over data-parallel workers (jobs.training)
                            on_gradients(params)
                        optimizer.step()
                        losses.append(loss.item())
                        clip_losses.append(clip_loss.item())
                scheduler.step()
        seconds = (time.perf_counter() - started) / max(len(losses), 1)
        meta = {"train_steps": config.num_steps, "t_edit": int(t_edit), "source_text": source_text,
                "target_text": target_text, "form": config.form, "epochs": config.epochs, "lr": config.lr,
                "images": int(images.shape[0]), "text_cosine": cosine}
        direction = _direction_of(config.form, trained, train_ts, h_shape, model, meta,
                                  f"{source_text} → {target_text}")
        if config.edit_timesteps is not None:
            window = config.made_with or f"timesteps {train_ts[0]} … {train_ts[-1]}"
        else:
            window = t_edit_label(t_edit) + (" (LPIPS rule)" if config.t_edit is None else "")
        direction = dataclasses.replace(direction, made_with=f"{window}, trained on {config.num_steps} steps")
    return TrainedDirection(direction, tuple(losses), tuple(clip_losses), int(t_edit), cosine, seconds, tuple(train_ts))
