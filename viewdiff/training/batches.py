"""A loader batch -> the multi-view UNet's inputs on the training device.

The batch (``viewdiff.data.stream``) is (B, N, ...) on the CPU; the model wants rows b*N + i
(DESIGN.md). The frozen VAE and text encoder run here, without gradients: latents are a sample
of the VAE posterior (as SD's own training and the reference), text embeddings are those of the
prompt or, with probability ``train.prompt_dropout`` per view or per object
(``train.prompt_dropout_per``), of the empty prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from viewdiff.diffusion import draw_prompt_dropout, drop_prompts
from viewdiff.prior.call import encode_images, encode_prompts
from viewdiff.training.base_pipeline import BasePipeline


@dataclass(frozen=True)
class ModelInputs:
    """What the multi-view UNet needs besides noisy latents and timesteps (rows b*N + i)."""

    latents: Tensor
    """(B*N, 4, h, w) float32 clean latents x_0."""
    encoder_hidden_states: Tensor
    """(B*N, 77, D) text embeddings, the object's for each of its views."""
    K: Tensor
    """(B*N, 3, 3) intrinsics in pixels of the images."""
    w2c: Tensor
    """(B*N, 4, 4) world-to-camera in the normalised scene."""
    pose_features: Tensor
    """(B*N, 10) the per-view pose condition."""
    n_views: int
    """N."""
    image_size_hw: tuple[int, int]
    """(H, W) of the images."""


def model_inputs(
    batch: dict,
    base: BasePipeline,
    device: torch.device,
    prompt_dropout: float,
    generator: torch.Generator,
    prompt_dropout_per: str = "object",
) -> ModelInputs:
    """Encode a batch's images and (partly dropped) prompts; cameras to rows on ``device``."""
    images = batch["images"]  # (B, N, 3, H, W)
    n_objects, n_views, _, height, width = images.shape
    dropped = draw_prompt_dropout(
        n_objects, n_views, prompt_dropout, prompt_dropout_per, generator
    )  # (B, N)
    if prompt_dropout_per == "object":  # one text per object, repeated for its views
        prompts = drop_prompts(batch["prompt"], dropped[:, 0])
        text = encode_prompts(base.text_encoder, base.tokenizer, prompts)  # (B, 77, D)
        text = text.repeat_interleave(n_views, dim=0)
    else:
        rows = [prompt for prompt in batch["prompt"] for _ in range(n_views)]
        prompts = drop_prompts(rows, dropped.flatten())
        text = encode_prompts(base.text_encoder, base.tokenizer, prompts)  # (B*N, 77, D)
    latents = encode_images(base.vae, images.to(device, non_blocking=True), generator)
    cameras = {  # (B*N, ...) each
        key: batch[key].to(device, non_blocking=True).flatten(0, 1)
        for key in ("K", "w2c", "pose_features")
    }
    return ModelInputs(
        latents=latents.float(),
        encoder_hidden_states=text,
        K=cameras["K"],
        w2c=cameras["w2c"],
        pose_features=cameras["pose_features"],
        n_views=n_views,
        image_size_hw=(height, width),
    )
