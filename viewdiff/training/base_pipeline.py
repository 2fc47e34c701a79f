"""The base Stable Diffusion pipeline that training starts from: a diffusers folder or a hub id.

Tokenizer, text encoder, VAE and UNet are loaded separately (no pipeline object: the UNet is
about to be augmented), plus the noise scheduler's config, whose betas and prediction type the
training schedule starts from. The VAE and the text encoder stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from viewdiff.config import ModelConfig
from viewdiff.training.preflight import InputError


@dataclass
class BasePipeline:
    """The parts of a Stable Diffusion pipeline that training uses."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler_config: dict[str, Any]


# Part name -> the class that loads it from the subfolder of that name.
_MODEL_PARTS = {
    "tokenizer": CLIPTokenizer,
    "text_encoder": CLIPTextModel,
    "vae": AutoencoderKL,
    "unet": UNet2DConditionModel,
}


def load_base_pipeline(model: ModelConfig) -> BasePipeline:
    """Load the base pipeline of ``model.pretrained_model``; failures name the part (InputError)."""
    source, revision = model.pretrained_model, model.revision
    parts: dict[str, Any] = {}
    for name in (*_MODEL_PARTS, "scheduler"):
        try:
            if name == "scheduler":
                config = DDPMScheduler.load_config(source, subfolder=name, revision=revision)
                parts["scheduler_config"] = dict(config)
            else:
                parts[name] = _MODEL_PARTS[name].from_pretrained(
                    source, subfolder=name, revision=revision
                )
        except (OSError, ValueError) as error:
            raise InputError(
                f"model.pretrained_model={source!r}: cannot load its {name}: {error}"
            ) from None
    return BasePipeline(**parts)


def freeze_encoders(base: BasePipeline, device: torch.device, dtype: torch.dtype) -> None:
    """VAE and text encoder: frozen, in eval mode, on ``device`` in ``dtype``."""
    for module in (base.vae, base.text_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
        if module.dtype != dtype:  # diffusers warns about any dtype cast, even a no-op one
            module.to(dtype=dtype)
