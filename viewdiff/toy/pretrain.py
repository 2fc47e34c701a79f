"""Pretrain the toy world's Stable Diffusion from scratch: VAE, then UNet + text encoder.

    python -m viewdiff.toy pretrain --shards SHARDS --heldout HELDOUT_SHARDS --out DIR

``SHARDS`` are toy objects packed by ``data/prepare_co3d.py`` (64 px views); every view is one
training image with its object's caption. The models have SD 2.1 base's layout at the "toy"
size of ``viewdiff.tiny`` (so ``down_blocks.2``, ``mid_block``, ``up_blocks.1`` mean the same
as in the real model) and SD 2.1 base's noise schedule. Writes

    DIR/vae/checkpoint/, DIR/unet/checkpoint/   the stages' resumable state
    DIR/logs/{vae,unet}/                        tensorboard: losses, held-out PSNR, accuracy
    DIR/sd/                                     a standard diffusers Stable Diffusion folder
    DIR/pretrain.json                           the options, the seed and the final scores

A rerun resumes where the last one stopped (a finished stage is not retrained).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import CLIPTokenizer

from viewdiff.atomic_folder import atomic_folder
from viewdiff.tiny import random_components, save_pipeline
from viewdiff.toy.classify import fit_shape_classifier
from viewdiff.toy.images import read_shard_images
from viewdiff.toy.stage import run_stage
from viewdiff.toy.t2i_training import UNetTraining, t2i_stage
from viewdiff.toy.vae_training import VaeTraining, latent_scaling_factor, vae_stage

SD_FOLDER = "sd"


@dataclass(frozen=True)
class PretrainConfig:
    """Both stages of the toy pretraining."""

    seed: int = 0
    vae: VaeTraining = field(default_factory=VaeTraining)
    unet: UNetTraining = field(default_factory=UNetTraining)


def pretrain(shards: Path, heldout: Path, out: Path, config: PretrainConfig) -> Path:
    """Train both stages (resuming), write ``out/sd/``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_images = read_shard_images(shards)
    heldout_images = read_shard_images(heldout)
    # Random toy-size parts; the tokenizer is generated, and written where the folder will be.
    final = out / SD_FOLDER
    with atomic_folder(final) as staging:  # out/sd.tmp/, swapped in complete at the end
        components, _ = random_components("toy", config.seed, staging / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
        vae = components["vae"]
        # Stage 1: the VAE, then SD's latent scaling (1 / std of the training latents).
        vae_scores = run_stage(
            vae_stage(vae, train_images, heldout_images, config.vae, config.seed), out
        )
        vae.eval().requires_grad_(False)
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, train_images))
        # Stage 2: UNet + text encoder, scored by a shape classifier fitted on the real renders.
        classifier = fit_shape_classifier(
            train_images.floats() * 0.5 + 0.5, train_images.categories
        )
        stage = t2i_stage(
            components["unet"], components["text_encoder"], tokenizer, vae, train_images,
            dict(components["scheduler"].config), classifier, config.unet, config.seed,
        )  # fmt: skip
        unet_scores = run_stage(stage, out)
        save_pipeline(staging, components)  # the Stable Diffusion folder
    report = {
        "config": dataclasses.asdict(config),
        "shards": str(shards),
        "heldout": str(heldout),
        "vae": vae_scores,
        "scaling_factor": vae.config.scaling_factor,
        "unet": unet_scores,
        "minutes_this_run": (time.perf_counter() - started) / 60.0,
    }
    (out / "pretrain.json").write_text(json.dumps(report, indent=2) + "\n")
    return final
