"""The one call path into the multi-view prior: text and VAE encoders, per-view conditions and
the guided prediction that sampling, training's validation, SDS, inversion and TrAME share.

``prior_predictions`` calls the multi-view UNet on the latents of B objects x N views (rows
b*N .. b*N+N-1), one camera per view; classifier-free guidance (Ho & Salimans 2022, eq. 6, whose
w is our w - 1) drops the text and keeps the cameras: ``pred = uncond + w (cond - uncond)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer


@torch.no_grad()
def encode_prompts(
    text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: Sequence[str]
) -> Tensor:
    """CLIP text embeddings (B, 77, D) of B prompts ('' is the unconditional prompt)."""
    input_ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(input_ids.to(text_encoder.device))[0]


def _shift_factor(vae: AutoencoderKL) -> float:
    """The VAE's latent shift (None in SD 1/2: no shift)."""
    return getattr(vae.config, "shift_factor", None) or 0.0


def encode_images(
    vae: AutoencoderKL,
    images: Tensor,
    generator: torch.Generator | None = None,
    sample: bool = True,
    grad: bool = False,
) -> Tensor:
    """Scaled latents (B*N, 4, H/8, W/8) of images (B, N, 3, H, W) in [-1, 1].

    ``sample``: a draw of the VAE's posterior with ``generator`` (SD's training, the reference);
    otherwise its mean (deterministic, for given views at inference). The scaling makes the
    latents about unit variance (LDM, Sec. 3.1). ``grad``: differentiable w.r.t. the images
    (score distillation backpropagates through the encoder into the renders).
    """
    with torch.set_grad_enabled(grad):
        flat = images.flatten(0, 1).to(vae.device, vae.dtype)  # (B*N, 3, H, W)
        posterior = vae.encode(flat).latent_dist
        latents = posterior.sample(generator=generator) if sample else posterior.mode()
        return (latents - _shift_factor(vae)) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Images (rows, 3, H, W) in [-1, 1] of scaled latents (rows, 4, h, w)."""
    unscaled = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + _shift_factor(vae)
    return vae.decode(unscaled).sample.float().clamp(-1.0, 1.0)


def guided_prediction(uncond: Tensor, cond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: uncond + w (cond - uncond) (Ho & Salimans eq. 6 with w - 1)."""
    return uncond + guidance_scale * (cond - uncond)


def flatten_views(values: Tensor) -> Tensor:
    """(B, N, ...) -> (B*N, ...)."""
    return values.reshape(-1, *values.shape[2:])


@dataclass(frozen=True)
class ViewConditions:
    """What B objects x N views are generated from: prompts and per-view cameras."""

    text: Tensor
    """(B, 77, D) the prompts' embeddings."""
    empty_text: Tensor | None
    """(B, 77, D) the empty prompt's, for guidance (None: no guidance possible)."""
    K: Tensor
    """(B, N, 3, 3) intrinsics in pixels of images of ``image_size_hw``."""
    w2c: Tensor
    """(B, N, 4, 4) OpenCV world-to-camera in the normalised scene."""
    pose: Tensor
    """(B, N, 10) pose features (``viewdiff.cameras.pose_features``)."""
    image_size_hw: tuple[int, int]
    """(H, W) of the images."""


def prior_predictions(
    model: nn.Module,
    latents: Tensor,
    timesteps: Tensor,
    conditions: ViewConditions,
    guidance_scale: float,
    control: Any = None,
) -> tuple[Tensor, Tensor]:
    """The prior's guided and conditional predictions (B*N, C, h, w) for latents (B*N, C, h, w)
    at per-view ``timesteps`` (B*N,): the one call path of sampling, SDS and editing.

    Guidance drops the text and keeps the cameras; with ``guidance_scale`` 1 only the
    conditional branch runs and both results are it. ``model`` is a ``MultiViewUNet``;
    ``control`` an ``AttentionControl`` of TrAME's dual-branch calls (objects [source, target]).
    """
    c = conditions
    n_views = c.K.shape[1]
    text = c.text.repeat_interleave(n_views, 0)
    cameras = [flatten_views(c.K), flatten_views(c.w2c), flatten_views(c.pose)]
    guided = guidance_scale != 1.0
    if guided:  # unconditional rows first: [uncond objects, cond objects], same cameras
        if c.empty_text is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs the empty prompt's embedding")
        text = torch.cat([c.empty_text.repeat_interleave(n_views, 0), text])
        cameras = [torch.cat([x, x]) for x in cameras]
        latents, timesteps = torch.cat([latents, latents]), timesteps.repeat(2)
    unet: UNet2DConditionModel = model.unet  # nn.Module's __getattr__ says Tensor | Module
    dtype = unet.dtype
    extra = {} if control is None else {"control": control}
    prediction = model(
        latents.to(dtype),
        timesteps,
        text.to(dtype),
        *cameras,
        n_views=n_views,
        image_size_hw=c.image_size_hw,
        **extra,
    ).float()
    if not guided:
        return prediction, prediction
    uncond, cond = prediction.chunk(2)
    return guided_prediction(uncond, cond, guidance_scale), cond
