"""Stage 2 of the toy pretraining: the UNet and the tiny CLIP text encoder, jointly, from scratch.

Stable Diffusion's objective (LDM Sec. 3.3, epsilon prediction) on the trained VAE's latents of
the toy views: x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps with t uniform over SD 2.1 base's
1000-step scaled-linear schedule, loss ||eps - eps_theta(x_t, t, c)||^2. The caption is replaced
by the empty prompt 10% of the time, so that classifier-free guidance has its unconditional
branch. The VAE is frozen: each view's posterior mean and std are computed once, and every
step draws its latents from them (as SD samples the posterior).

Evaluation samples every toy prompt with the pipeline that will be shipped (DDIM, CFG) and scores
colour and shape with ``viewdiff.toy.classify``: the quality curve of the stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from transformers import CLIPTextModel, CLIPTokenizer

from viewdiff.data.toy_objects import toy_prompts
from viewdiff.toy.classify import ShapeClassifier, classifier_accuracy
from viewdiff.toy.images import ToyImages
from viewdiff.toy.stage import Stage
from viewdiff.visualize import image_grid, to_pil


@dataclass(frozen=True)
class UNetTraining:
    """How the toy UNet and text encoder are trained."""

    steps: int = 8000
    batch_size: int = 32
    learning_rate: float = 1e-3
    caption_dropout: float = 0.1
    eval_samples_per_prompt: int = 2
    eval_inference_steps: int = 20
    eval_guidance_scale: float = 4.0
    checkpoint_every: int = 250  # steps between resumable checkpoints


@dataclass(frozen=True)
class LatentCache:
    """The frozen VAE's posterior of every training view: mean and std (M, 4, h, w), unscaled."""

    mean: Tensor
    std: Tensor

    @staticmethod
    @torch.no_grad()
    def encode(vae: AutoencoderKL, images: ToyImages, batch_size: int = 64) -> LatentCache:
        """Encode every view once."""
        means, stds = [], []
        for start in range(0, len(images), batch_size):
            posterior = vae.encode(images.floats(slice(start, start + batch_size))).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
        return LatentCache(torch.cat(means), torch.cat(stds))


def token_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> Tensor:
    """Padded CLIP token ids (B, 77) of prompts."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip


def toy_pipeline(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    scheduler_config: dict,
) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline of the parts, with DDIM on the training schedule."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seed: int,
    steps: int = 20,
    guidance_scale: float = 4.0,
    batch_size: int = 36,
) -> Tensor:
    """One image (B, 3, H, W) in [0, 1] per prompt; prompt i draws its noise from seed + i."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(
            chunk, num_inference_steps=steps, guidance_scale=guidance_scale,
            generator=generators, output_type="pt", return_dict=True,
        )  # fmt: skip
        images.append(out.images.float().cpu())
    return torch.cat(images)


def t2i_stage(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    vae: AutoencoderKL,
    train: ToyImages,
    scheduler_config: dict,
    classifier: ShapeClassifier,
    options: UNetTraining,
    seed: int,
) -> Stage:
    """The UNet + text encoder stage: epsilon loss, CFG dropout, colour/shape accuracy."""
    cache = LatentCache.encode(vae, train)
    scaling = vae.config.scaling_factor
    captions = sorted(set(train.captions))
    caption_ids = token_ids(tokenizer, captions)  # (C, 77)
    caption_of_view = torch.tensor([captions.index(c) for c in train.captions])
    empty_ids = token_ids(tokenizer, [""])[0]
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    prompts = [p for p in toy_prompts() for _ in range(options.eval_samples_per_prompt)]

    def loss(step: int, generator: torch.Generator) -> Tensor:
        batch = options.batch_size
        rows = torch.randint(0, len(train), (batch,), generator=generator)
        eps_posterior = torch.randn(cache.mean[rows].shape, generator=generator)
        latents = (cache.mean[rows] + cache.std[rows] * eps_posterior) * scaling
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator
        )
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        ids = caption_ids[caption_of_view[rows]].clone()
        ids[torch.rand(batch, generator=generator) < options.caption_dropout] = empty_ids
        encoder_hidden_states = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states).sample
        return F.mse_loss(prediction, noise)

    def evaluate(writer: SummaryWriter, step: int) -> dict[str, float]:
        pipe = toy_pipeline(vae, text_encoder, tokenizer, unet, scheduler_config)
        pipe.set_progress_bar_config(disable=True)
        images = generate(
            pipe, prompts, seed=10_000, steps=options.eval_inference_steps,
            guidance_scale=options.eval_guidance_scale,
        )  # fmt: skip
        shown = images[:: options.eval_samples_per_prompt]
        grid = image_grid([to_pil(image * 2.0 - 1.0) for image in shown], columns=6)
        writer.add_image("t2i/every_prompt", np.asarray(grid), step, dataformats="HWC")
        scores = classifier_accuracy(classifier, images, prompts)
        return {f"{name}_accuracy": value for name, value in scores.items()}

    return Stage(
        name="unet",
        modules={"unet": unet, "text_encoder": text_encoder},
        loss=loss,
        evaluate=evaluate,
        steps=options.steps,
        learning_rate=options.learning_rate,
        evaluate_every=500,
        checkpoint_every=options.checkpoint_every,
        seed=seed,
    )
