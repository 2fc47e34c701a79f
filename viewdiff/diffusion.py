"""The diffusion side of training: noise schedule, timesteps, conditioning dropout, loss targets.

Pure functions over tensors; every random draw takes an explicit CPU ``torch.Generator`` (the
training loop seeds one per step, so that a resumed run draws exactly what it would have drawn).

Forward process (DDPM, Ho et al. 2020, eq. 4): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
with ``abar_t = alphas_cumprod[t]``. The model predicts ``eps`` ("epsilon") or the velocity
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` ("v_prediction", Salimans & Ho 2022, Sec. 4).

ViewDiff's training sample (CVPR 2024, Sec. 3.3; the reference's train.py):

- one timestep per object, drawn uniformly from [0, T), shared by its N views;
- each of the first ``image_condition_views`` views is, independently with probability
  ``image_condition_prob``, given clean (t = 0): an image condition that the other views attend
  to and that the projection layers lift into their grid. We feed it exactly clean (the
  reference feeds ``add_noise`` at t = 0, i.e. ``sqrt(abar_0) = 0.9996`` of the latent plus a
  trace of noise), as inference does;
- the prompt is dropped ("") with probability ``prompt_dropout`` for classifier-free guidance,
  per view (``prompt_dropout_per=view``, the reference: 2 x 0.1 = 0.2 for each view on its own)
  or per object (all its views together, as guidance drops it at inference);
- the loss is the MSE of the prediction, over (``train.loss_views``):

  - ``all`` views, as the reference (train.py:573-578): the targets of the views given clean
    are set to the detached prediction (``detached_clean_targets``), then
    ``F.mse_loss(reduction="none").mean()`` averages over every element of all B*N views. A
    clean view's error and gradient are exactly zero, but it counts in the mean;
  - the ``generated`` (noised) views only (``generated_views_mse`` with their mask; configs
    saved before the key). A micro-batch's gradient keeps its direction and grows by the
    factor (all views / generated views), 1 without image conditions: micro-batches with clean
    views weigh more than under ``all``, and more against the prior batch.

  The prior preservation batch has no clean view: both give its plain MSE.

Zero terminal SNR (Lin et al. 2024, Alg. 1) rescales the betas so that ``abar_{T-1} = 0``: the
last timestep is pure noise. The reference trains so with epsilon prediction (SD 2.1 base's
type), and so do we by default (``train.prediction_type=base``): there, at t = T-1 the epsilon
target equals the input and x_0 cannot be recovered from it, so samplers must not evaluate
t = T-1 (DDIM's "leading" spacing of SD never does). Lin et al. pair the rescale with
v-prediction, which learns that step: ``train.prediction_type=v_prediction`` (a change of
parametrisation that a pretrained epsilon UNet needs a long fine-tune to adopt). The export
carries the training scheduler's config, so inference always knows which it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction")


def resolve_prediction_type(choice: str, base_prediction_type: str) -> str:
    """The prediction type to train: the base scheduler's ('base') or the one chosen."""
    prediction_type = base_prediction_type if choice == "base" else choice
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction type {prediction_type!r} is not supported (base scheduler: "
            f"{base_prediction_type!r}); set train.prediction_type to one of {PREDICTION_TYPES}"
        )
    return prediction_type


def noise_scheduler(
    base_config: dict[str, Any], zero_terminal_snr: bool, prediction_type: str
) -> DDPMScheduler:
    """The training DDPM schedule: the base betas, rescaled to zero terminal SNR or not."""
    return DDPMScheduler.from_config(
        base_config, rescale_betas_zero_snr=zero_terminal_snr, prediction_type=prediction_type
    )


def draw_timesteps(
    n_objects: int, n_views: int, num_train_timesteps: int, generator: torch.Generator
) -> Tensor:
    """(B*N,) long: one timestep per object from [0, T), repeated for its N views."""
    per_object = torch.randint(0, num_train_timesteps, (n_objects,), generator=generator)
    return per_object.repeat_interleave(n_views)


def draw_clean_views(
    n_objects: int, n_views: int, prob: float, max_views: int, generator: torch.Generator
) -> Tensor:
    """(B, N) bool: views given clean as image conditions, only among the first ``max_views``."""
    clean = torch.rand((n_objects, n_views), generator=generator) < prob
    clean[:, max(0, max_views) :] = False
    return clean


def draw_prompt_dropout(
    n_objects: int, n_views: int, prob: float, per: str, generator: torch.Generator
) -> Tensor:
    """(B, N) bool: views whose prompt becomes the empty prompt (classifier-free guidance),
    drawn per view or per object (``per``: "view" or "object")."""
    if per == "object":
        dropped = torch.rand((n_objects,), generator=generator) < prob
        return dropped[:, None].expand(n_objects, n_views)
    if per == "view":
        return torch.rand((n_objects, n_views), generator=generator) < prob
    raise ValueError(f"train.prompt_dropout_per must be 'object' or 'view', got {per!r}")


def drop_prompts(prompts: Sequence[str], dropped: Tensor) -> list[str]:
    """The prompts with the dropped ones replaced by ''."""
    if len(prompts) != dropped.numel():
        raise ValueError(f"{len(prompts)} prompts but {dropped.numel()} dropout draws")
    return ["" if drop else prompt for prompt, drop in zip(prompts, dropped.tolist(), strict=True)]


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """(R,) values shaped (R, 1, 1, 1) to broadcast against ``like`` (R, C, h, w)."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def add_noise(latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4), per row."""
    abar = alphas_cumprod.to(latents.device, torch.float32)[timesteps.to(latents.device)]
    return _per_row(abar.sqrt(), latents) * latents + _per_row((1 - abar).sqrt(), latents) * noise


def velocity(latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022), per row."""
    abar = alphas_cumprod.to(latents.device, torch.float32)[timesteps.to(latents.device)]
    return _per_row(abar.sqrt(), latents) * noise - _per_row((1 - abar).sqrt(), latents) * latents


def loss_target(
    prediction_type: str, latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """What the model is trained to predict: the noise (epsilon) or the velocity (v)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(latents, noise, timesteps, alphas_cumprod)
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected {PREDICTION_TYPES}")


def detached_clean_targets(prediction: Tensor, target: Tensor, generated: Tensor) -> Tensor:
    """The targets, those of the views given clean (rows not ``generated``) replaced by the
    detached prediction: zero error and no gradient there (the reference, train.py:573-574)."""
    rows = generated.to(target.device).reshape(-1, *([1] * (target.ndim - 1)))
    return torch.where(rows, target, prediction.detach().to(target.dtype))


def generated_views_mse(prediction: Tensor, target: Tensor, generated: Tensor) -> Tensor:
    """Mean squared error over the generated views (rows where ``generated``), in float32.

    With no generated view at all the loss is an exact zero that still depends on the
    prediction, so that every rank runs the same backward (DDP needs it).
    """
    squared = (prediction.float() - target.float()).square().flatten(1).mean(dim=1)  # (B*N,)
    weights = generated.to(squared.dtype)
    return (squared * weights).sum() / weights.sum().clamp_min(1.0)


@dataclass(frozen=True)
class DiffusionSample:
    """One training sample of the diffusion process for B objects x N views (rows b*N + i)."""

    noisy_latents: Tensor
    """(B*N, 4, h, w) x_t; clean views are exactly x_0."""
    timesteps: Tensor
    """(B*N,) long: the object's timestep, 0 for clean views."""
    target: Tensor
    """(B*N, 4, h, w) the loss target (epsilon or v)."""
    generated: Tensor
    """(B*N,) bool: views that are denoised (not image conditions); with
    ``train.loss_views=generated`` only these enter the loss."""


def diffusion_sample(
    latents: Tensor,
    n_views: int,
    alphas_cumprod: Tensor,
    prediction_type: str,
    image_condition_prob: float,
    image_condition_views: int,
    generator: torch.Generator,
) -> DiffusionSample:
    """Timesteps, clean views, noise, noisy latents and targets for latents (B*N, 4, h, w)."""
    rows = latents.shape[0]
    if rows % n_views:
        raise ValueError(f"latents have {rows} rows: not whole objects of n_views={n_views}")
    n_objects, device = rows // n_views, latents.device
    timesteps = draw_timesteps(n_objects, n_views, alphas_cumprod.shape[0], generator)
    clean = draw_clean_views(
        n_objects, n_views, image_condition_prob, image_condition_views, generator
    ).flatten()  # (B*N,)
    noise = torch.randn(latents.shape, generator=generator).to(latents)  # drawn on the CPU
    timesteps = torch.where(clean, torch.zeros_like(timesteps), timesteps).to(device)
    clean = clean.to(device)
    noisy = add_noise(latents, noise, timesteps, alphas_cumprod)
    noisy = torch.where(clean.reshape(-1, *([1] * (latents.ndim - 1))), latents, noisy)
    target = loss_target(prediction_type, latents, noise, timesteps, alphas_cumprod)
    return DiffusionSample(noisy, timesteps, target, ~clean)
