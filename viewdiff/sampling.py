"""Joint multi-view denoising: N posed views of each object generated together (ViewDiff Sec. 3).

``denoise_views`` runs any diffusers scheduler of ``SCHEDULERS`` over the latents of B objects x
N views (rows b*N .. b*N+N-1), every view with its own camera and its own timestep: views given
as image conditions sit clean at t = 0 in every call (as in training), their latents are the
VAE encodings and are never changed; the others are denoised together at the scheduler's t.
Classifier-free guidance (Ho & Salimans 2022, eq. 6, whose w is our w - 1) drops the text and
keeps the cameras: ``pred = uncond + w (cond - uncond)``; with w = 1 only the conditional branch
is computed.

``sample_views`` wraps it for text (and first-M-views) conditioning: encode, draw noise,
denoise, decode. The autoregressive sliding window over 100+ views is built on
``denoise_views`` in ``viewdiff.inference.autoregressive``.

The call into the prior and the encoders live in ``viewdiff.prior.call``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from viewdiff.cameras.pose_features import pose_features
from viewdiff.prior.call import (
    ViewConditions,
    decode_latents,
    encode_images,
    encode_prompts,
    flatten_views,
    prior_predictions,
)

SchedulerName = Literal["unipc", "ddim", "ddpm", "dpmsolver", "euler"]
"""``sample.scheduler``'s names (SampleConfig's Literal; a test keeps the two equal)."""

# Samplers by name (``sample.scheduler``). UniPC (Zhao et al. 2023) with 10 steps is the
# reference's test sampler; DDIM (Song et al. 2021) draws the validation grids.
SCHEDULERS: dict[SchedulerName, type[SchedulerMixin]] = {
    "unipc": UniPCMultistepScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpmsolver": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}
Generators = torch.Generator | Sequence[torch.Generator]


def inference_scheduler(
    name: SchedulerName, noise_scheduler_config: dict[str, Any]
) -> SchedulerMixin:
    """The sampler ``name`` of ``SCHEDULERS`` on the training noise schedule.

    With zero terminal SNR and epsilon prediction, t = T-1 carries no signal to predict x_0
    from (see ``viewdiff.diffusion``): the spacing stays SD's 'leading' one, which never visits
    it. With v-prediction 'trailing' starts at t = T-1, as Lin et al. 2024 (Sec. 3.3) advise.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    config = noise_scheduler_config
    spacing = config.get("timestep_spacing", "leading")
    if config.get("rescale_betas_zero_snr") and config.get("prediction_type") == "v_prediction":
        spacing = "trailing"
    # As a keyword: from_config drops config keys that were defaults in the file it came from.
    return SCHEDULERS[name].from_config(config, timestep_spacing=spacing)


def ddim_scheduler(noise_scheduler_config: dict[str, Any]) -> DDIMScheduler:
    """DDIM (Song et al. 2021) on the training schedule, eta = 0 (the validation sampler)."""
    return inference_scheduler("ddim", noise_scheduler_config)


def initial_noise(shape: tuple[int, ...], generator: Generators) -> Tensor:
    """Standard normal latents (B, N, C, h, w) on the CPU: from one generator, or one per object.

    One generator per object makes an object's noise independent of the batch it is in.
    """
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for {shape[0]} objects")
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])


def _step_kwargs(scheduler: SchedulerMixin, generator: Generators) -> dict[str, Any]:
    """The generator for samplers that draw noise in their step (DDPM, ancestral ones)."""
    if "generator" not in inspect.signature(scheduler.step).parameters:
        return {}
    return {"generator": generator if isinstance(generator, torch.Generator) else generator[0]}


@torch.no_grad()
def denoise_views(
    model: nn.Module,
    scheduler: SchedulerMixin,
    noise: Tensor,
    conditions: ViewConditions,
    num_inference_steps: int,
    guidance_scale: float,
    generator: Generators,
    known: Tensor | None = None,
    clean: Tensor | None = None,
    show_progress: bool = False,
    first_step: int = 0,
) -> Tensor:
    """Denoised latents (B, N, C, h, w) of B objects x N views, from standard normal ``noise``.

    ``known`` (B, N) bool marks views given clean, whose latents ``clean`` (B, N, C, h, w) are
    returned as they are; ``model`` is a ``MultiViewUNet``. Guidance needs
    ``conditions.empty_text`` unless ``guidance_scale`` is 1. With ``first_step`` k > 0 the
    sampler's first k steps are skipped and ``noise`` holds the latents at its k-th timestep
    (``scheduler.add_noise`` of clean latents there: SDEdit's start), not unit noise.
    """
    n_objects, n_views = noise.shape[:2]
    c = conditions
    if c.K.shape[:2] != (n_objects, n_views) or c.text.shape[0] != n_objects:
        raise ValueError(
            f"noise {tuple(noise.shape)}, K {tuple(c.K.shape)}, text {tuple(c.text.shape)}: "
            "expected (B, N, ...) latents and cameras and B prompts"
        )
    device = c.K.device
    if (known is None) != (clean is None):
        raise ValueError("views given clean need both `known` and their `clean` latents")
    if known is None or clean is None:  # both None (checked above): no view given
        known, clean = torch.zeros(n_objects, n_views, dtype=torch.bool), torch.zeros_like(noise)
    known = known.to(device).flatten()  # (B*N,)
    given, clean = known[:, None, None, None], flatten_views(clean).to(device, torch.float32)
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = flatten_views(noise).to(device)
    if first_step == 0:
        latents = latents * scheduler.init_noise_sigma
    steps = scheduler.timesteps[first_step * scheduler.order :]
    for t in tqdm(steps, desc="denoising", disable=not show_progress, leave=False):
        latents = torch.where(given, clean, latents)
        # Given views enter clean at t = 0, unscaled: they are x_0, not a sample of the sampler.
        model_input = torch.where(given, clean, scheduler.scale_model_input(latents, t))
        timesteps = torch.where(known, 0, t.to(device)).long()  # (B*N,)
        prediction, _ = prior_predictions(model, model_input, timesteps, c, guidance_scale)
        step = scheduler.step(prediction, t, latents, **_step_kwargs(scheduler, generator))
        latents = step.prev_sample
    latents = torch.where(given, clean, latents)
    return latents.reshape(n_objects, n_views, *latents.shape[1:])


@torch.no_grad()
def sample_views(
    model: nn.Module,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler: SchedulerMixin,
    prompts: Sequence[str],
    K: Tensor,
    w2c: Tensor,
    image_size_hw: tuple[int, int],
    num_inference_steps: int,
    guidance_scale: float,
    generator: Generators,
    known_images: Tensor | None = None,
    intensity_stats: Tensor | None = None,
    show_progress: bool = False,
) -> Tensor:
    """Images (B, N, 3, H, W) in [-1, 1] of B objects seen by N cameras each, denoised jointly.

    ``model`` is a ``MultiViewUNet``; ``K`` (B, N, 3, 3) and ``w2c`` (B, N, 4, 4) are OpenCV
    cameras in the normalised scene for images of ``image_size_hw``; ``known_images``
    (B, M, 3, H, W), M < N, are the first M views, given; ``intensity_stats`` (B, N, 2) enter the
    pose features (zeros when None, as the reference at test time). ``generator`` (a CPU
    generator, or one per object) draws the initial noise and any sampler noise, so results
    repeat exactly.
    """
    n_objects, n_views = K.shape[:2]
    if len(prompts) != n_objects or w2c.shape[:2] != (n_objects, n_views):
        raise ValueError(
            f"{len(prompts)} prompts, K {tuple(K.shape)}, w2c {tuple(w2c.shape)}: "
            "expected B prompts and (B, N, ...) cameras"
        )
    height, width = image_size_hw
    pose = pose_features(K, w2c, image_size_hw, intensity_stats)  # (B, N, 10)
    text = encode_prompts(text_encoder, tokenizer, prompts)
    empty = None
    if guidance_scale != 1.0:
        empty = encode_prompts(text_encoder, tokenizer, [""] * n_objects)
    latent_shape = (n_objects, n_views, vae.config.latent_channels, height // 8, width // 8)
    noise = initial_noise(latent_shape, generator)
    known, clean = _known_latents(vae, known_images, latent_shape)
    conditions = ViewConditions(text, empty, K, w2c, pose, image_size_hw)
    latents = denoise_views(
        model,
        scheduler,
        noise,
        conditions,
        num_inference_steps,
        guidance_scale,
        generator,
        known,
        clean,
        show_progress,
    )
    return decode_latents(vae, flatten_views(latents)).reshape(n_objects, n_views, 3, height, width)


def _known_latents(
    vae: AutoencoderKL, known_images: Tensor | None, latent_shape: tuple[int, ...]
) -> tuple[Tensor | None, Tensor | None]:
    """(B, N) bool of given views (the first M) and (B, N, ...) their clean latents, or Nones."""
    if known_images is None:
        return None, None
    n_objects, n_views = latent_shape[:2]
    n_known = known_images.shape[1]
    if known_images.shape[0] != n_objects or not 0 < n_known < n_views:
        raise ValueError(
            f"known_images has shape {tuple(known_images.shape)}; expected (B={n_objects}, "
            f"M < N={n_views}, 3, H, W): the first M views"
        )
    known = torch.zeros(n_objects, n_views, dtype=torch.bool)
    known[:, :n_known] = True
    clean = torch.zeros(latent_shape)
    latents = encode_images(vae, known_images, sample=False).float().cpu()  # (B*M, ...)
    clean[:, :n_known] = latents.reshape(n_objects, n_known, *latent_shape[2:])
    return known, clean
