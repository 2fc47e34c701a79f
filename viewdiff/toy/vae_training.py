"""Stage 1 of the toy pretraining: the AutoencoderKL, from scratch, on crops of toy views.

Most steps train on random crops (32 px of the 64 px views, aligned to the VAE's 8x grid,
randomly flipped): about 4x cheaper per step than whole views, and what measured fastest to reach
colour on two cores (shared/notes/toy-feasibility.md). The VAE is not quite fully convolutional,
though: its mid-block attention and its GroupNorms see the whole latent, and a crop-trained VAE
measured 29-32 dB on held-out 32 px crops but 24 dB on the whole 64 px views (colours wrong,
holes in objects). So the last ``full_view_steps`` train on whole views. The loss is
LDM's without the adversarial and perceptual terms, which a 64 px toy world does not need: L1
reconstruction of a posterior sample plus a small KL to the unit Gaussian (weight 1e-6).

After training, ``latent_scaling_factor`` sets SD's ``scaling_factor`` to 1 / std of the
latents of the training views (LDM Sec. 3.1; SD's 0.18215 was found the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from viewdiff.inference.evaluate import to_unit_range, view_psnr
from viewdiff.model.multiview_unet import VAE_SCALE_FACTOR
from viewdiff.prior.call import decode_latents, encode_images
from viewdiff.toy.images import ToyImages
from viewdiff.toy.stage import Stage
from viewdiff.visualize import image_grid, to_pil


@dataclass(frozen=True)
class VaeTraining:
    """How the toy VAE is trained."""

    steps: int = 7000
    batch_size: int = 16
    crop: int = 32  # px, a multiple of 8; the views' side trains on whole views
    full_view_steps: int = 2000  # the last steps train on whole views (see the module doc)
    learning_rate: float = 2e-3
    kl_weight: float = 1e-6
    checkpoint_every: int = 250  # steps between resumable checkpoints


def random_crops(images: Tensor, crop: int, generator: torch.Generator) -> Tensor:
    """One random crop (B, C, crop, crop) per image, on the 8 px grid, half of them flipped."""
    batch, _, height, width = images.shape
    rows = torch.randint(0, (height - crop) // VAE_SCALE_FACTOR + 1, (batch,), generator=generator)
    cols = torch.randint(0, (width - crop) // VAE_SCALE_FACTOR + 1, (batch,), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    crops = []
    for image, row, col, flip in zip(images, rows.tolist(), cols.tolist(), flips, strict=True):
        top, left = row * VAE_SCALE_FACTOR, col * VAE_SCALE_FACTOR
        patch = image[:, top : top + crop, left : left + crop]
        crops.append(patch.flip(-1) if flip else patch)
    return torch.stack(crops)


def reconstruct(vae: AutoencoderKL, images: Tensor, batch_size: int = 64) -> Tensor:
    """Reconstructions (M, 3, H, W) in [-1, 1] from the posterior means of images in [-1, 1]:
    sampling's own encoder and decoder (given views are encoded so at inference)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size, None]  # (m, 1, 3, H, W): m objects x 1 view
        out.append(decode_latents(vae, encode_images(vae, chunk, sample=False)).cpu())
    return torch.cat(out)


def reconstruction_psnr(vae: AutoencoderKL, images: Tensor) -> float:
    """Mean PSNR (dB) over views of the VAE's round trip of images (M, 3, H, W) in [-1, 1]."""
    recon = reconstruct(vae, images)
    return view_psnr(to_unit_range(recon), to_unit_range(images)).mean().item()


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images: ToyImages, batch_size: int = 64) -> float:
    """1 / std of posterior samples of the views' latents (SD's ``scaling_factor``)."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    for start in range(0, len(images), batch_size):
        chunk = images.floats(slice(start, start + batch_size))
        samples.append(vae.encode(chunk).latent_dist.sample(generator=generator))
    return 1.0 / torch.cat(samples).std().item()


def vae_stage(
    vae: AutoencoderKL, train: ToyImages, heldout: ToyImages, options: VaeTraining, seed: int
) -> Stage:
    """The VAE's training stage: crop L1 + KL loss, held-out PSNR on whole views."""
    shown = heldout.floats(torch.linspace(0, len(heldout) - 1, 8).long())
    evaluation = heldout.floats(torch.linspace(0, len(heldout) - 1, min(256, len(heldout))).long())

    def loss(step: int, generator: torch.Generator) -> Tensor:
        rows = torch.randint(0, len(train), (options.batch_size,), generator=generator)
        whole = step >= options.steps - options.full_view_steps
        images = train.floats(rows)
        crops = random_crops(images, images.shape[-1] if whole else options.crop, generator)
        posterior = vae.encode(crops).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        return (recon - crops).abs().mean() + options.kl_weight * posterior.kl().mean()

    def evaluate(writer: SummaryWriter, step: int) -> dict[str, float]:
        pictures = [to_pil(image) for image in torch.cat([shown, reconstruct(vae, shown)])]
        grid = np.asarray(image_grid(pictures, columns=8))
        writer.add_image("vae/heldout_top_recon_bottom", grid, step, dataformats="HWC")
        return {"heldout_psnr": reconstruction_psnr(vae, evaluation)}

    return Stage(
        name="vae",
        modules={"vae": vae},
        loss=loss,
        evaluate=evaluate,
        steps=options.steps,
        learning_rate=options.learning_rate,
        checkpoint_every=options.checkpoint_every,
        seed=seed,
    )
