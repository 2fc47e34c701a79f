"""Validation grids: fixed prompts seen by fixed orbit cameras, generated jointly, every so often.

One object per ``train.validation_prompts``, N = ``data.n_views`` views on the default orbit of
inference (``sample.elevation_deg``, ``sample.radius``, ``sample.fov_deg``) around the
normalised object box, generated with ``viewdiff.sampling.sample_views`` (DDIM, classifier-free
guidance) from the same noise every time (seeded by train.seed), so that grids of successive
steps differ only by the training in between. With ``train.use_ema`` the EMA weights generate.
A grid has one row per prompt; it goes to tensorboard (``validation``) and to
``<output_dir>/validation/step-<k>.png``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torch import Tensor

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.config import Config, SampleConfig
from viewdiff.model import MultiViewUNet
from viewdiff.sampling import ddim_scheduler, sample_views
from viewdiff.training.base_pipeline import BasePipeline
from viewdiff.training.ema import EMA
from viewdiff.training.tracking import tensorboard_writer
from viewdiff.visualize import image_grid, to_pil

VALIDATION_DIR = "validation"


def validation_cameras(
    n_views: int, image_size: int, sample: SampleConfig
) -> tuple[Tensor, Tensor]:
    """K (N, 3, 3) and w2c (N, 4, 4) of N views on the default orbit of ``sample``."""
    w2c = orbit(n_views, sample.elevation_deg, sample.radius)
    K = intrinsics_from_fov(sample.fov_deg, image_size, image_size).expand(n_views, 3, 3)
    return K, w2c


def validation_views(
    model: MultiViewUNet,
    base: BasePipeline,
    noise_scheduler_config: dict,
    config: Config,
    device: torch.device,
) -> Tensor:
    """Images (P, N, 3, H, W) in [-1, 1]: the validation prompts on the validation orbit."""
    train, size = config.train, config.data.image_size
    prompts = list(train.validation_prompts)
    K, w2c = validation_cameras(config.data.n_views, size, config.sample)
    return sample_views(
        model,
        base.vae,
        base.text_encoder,
        base.tokenizer,
        ddim_scheduler(noise_scheduler_config),
        prompts,
        K.expand(len(prompts), -1, -1, -1).to(device),
        w2c.expand(len(prompts), -1, -1, -1).to(device),
        (size, size),
        num_inference_steps=train.validation_inference_steps,
        guidance_scale=train.validation_guidance_scale,
        generator=torch.Generator().manual_seed(train.seed),
    )


def grid_picture(images: Tensor) -> Image.Image:
    """One row per object, one column per view."""
    n_views = images.shape[1]
    return image_grid([to_pil(view) for views in images for view in views], columns=n_views)


def run_validation(
    accelerator: Accelerator,
    model: MultiViewUNet,
    base: BasePipeline,
    noise_scheduler_config: dict,
    config: Config,
    step: int,
    ema: EMA | None = None,
) -> Path | None:
    """Generate, save and log the validation grid (main rank; others return None at once)."""
    if not accelerator.is_main_process or not config.train.validation_prompts:
        return None
    was_training = model.training
    model.eval()
    weights = ema.swapped_in() if ema is not None else contextlib.nullcontext()
    try:
        with weights, accelerator.autocast():
            images = validation_views(
                model, base, noise_scheduler_config, config, accelerator.device
            )
    finally:
        model.train(was_training)
    picture = grid_picture(images)
    path = Path(config.train.output_dir) / VALIDATION_DIR / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    writer = tensorboard_writer(accelerator)
    if writer is not None:
        writer.add_image("validation", np.asarray(picture), step, dataformats="HWC")
        writer.flush()
    return path
