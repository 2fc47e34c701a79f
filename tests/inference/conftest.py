"""Shared fixtures of the inference tests: a real export of a tiny model, held-out shards."""

import dataclasses
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from viewdiff.config import Config, DataConfig, ModelConfig, TrainConfig
from viewdiff.data.shards import ShardOptions, write_shards
from viewdiff.data.synthetic import make_synthetic_dataset
from viewdiff.diffusion import noise_scheduler
from viewdiff.inference.load import load_export
from viewdiff.model import MultiViewUNet
from viewdiff.training.export import export_model

# Small 3D settings: the projection layers run, in a fraction of the paper's cost.
MODEL = ModelConfig(pose_lora_rank=4, projection_channels=8, voxel_grid_size=8, render_samples=8)


class Recorder(nn.Module):
    """A multi-view UNet that records what every call receives."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.unet, self.calls = model, model.unet, []

    def forward(self, latents, timesteps, text, K, w2c, pose, **kwargs):
        self.calls.append(
            {
                "latents": latents.clone(),
                "timesteps": timesteps.clone(),
                "text": text,
                "K": K,
                "w2c": w2c,
                "pose": pose,
                "n_views": kwargs["n_views"],
            }
        )
        return self.model(latents, timesteps, text, K, w2c, pose, **kwargs)


@pytest.fixture(scope="session")
def recorder() -> type[Recorder]:
    """``recorder(model)``: the model, recording its calls in ``.calls``."""
    return Recorder


@pytest.fixture(scope="session")
def tiny_export(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inference export of a tiny random multi-view model, written by training's exporter.

    The added weights are perturbed from their zero-initialised start, so that an export that
    dropped them would not load back to the same model.
    """
    out = tmp_path_factory.mktemp("tiny-run")
    config = Config(
        model=dataclasses.replace(MODEL, pretrained_model=str(tiny_sd)),
        data=DataConfig(image_size=64, n_views=3),
        train=TrainConfig(output_dir=str(out)),
    )
    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    model = MultiViewUNet(unet, config.model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    base = DDPMScheduler.load_config(tiny_sd / "scheduler")
    schedule = noise_scheduler(dict(base), zero_terminal_snr=True, prediction_type="epsilon")
    return export_model(model, config, schedule, step=5)


@pytest.fixture(scope="session")
def prior(tiny_export: Path):
    """The tiny export, loaded on the CPU."""
    return load_export(tiny_export, "cpu")


@pytest.fixture(scope="session")
def heldout_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two held-out synthetic objects (a box and a ball), 6 views each, 64 px shards."""
    out = tmp_path_factory.mktemp("heldout")
    root = make_synthetic_dataset(out / "co3d", ("box", "ball"), 1, 6, (96, 72), seed=5, points=500)
    options = ShardOptions(image_size=64, max_frames=6, min_frames=4, samples_per_shard=2)
    write_shards(root, out / "shards", options)
    return out / "shards"
