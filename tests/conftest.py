"""Shared fixtures. Tests never reach a model hub: everything is built locally and offline."""

import os

# Set before diffusers / transformers are imported anywhere, so that no test can download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, seed-0 Stable Diffusion pipeline folder, built once per test session."""
    from viewdiff.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"), size="tiny", seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: tiny models gain nothing from more, and on a shared 2-core
    machine threads that wait for each other at every small op made steps 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Small 3D settings: the projection layers run, in a fraction of the paper's cost.
TINY_MODEL = dict(pose_lora_rank=4, projection_channels=8, voxel_grid_size=8, render_samples=8)


@pytest.fixture(scope="session")
def tiny_export(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inference export of a tiny random multi-view model, written by training's exporter.

    The added weights are perturbed from their zero-initialised start, so that an export that
    dropped them would not load back to the same model.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from viewdiff.config import Config, DataConfig, ModelConfig, TrainConfig
    from viewdiff.diffusion import noise_scheduler
    from viewdiff.model import MultiViewUNet
    from viewdiff.training.export import export_model

    out = tmp_path_factory.mktemp("tiny-run")
    config = Config(
        model=ModelConfig(pretrained_model=str(tiny_sd), **TINY_MODEL),
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
    from viewdiff.prior.load import load_export

    return load_export(tiny_export, "cpu")


class Recorder(torch.nn.Module):
    """A multi-view UNet that records what every call receives."""

    def __init__(self, model: torch.nn.Module) -> None:
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
def heldout_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two held-out synthetic objects (a box and a ball), 6 views each, 64 px shards."""
    from viewdiff.data.shard_plan import ShardOptions
    from viewdiff.data.shards import write_shards
    from viewdiff.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("heldout")
    root = make_synthetic_dataset(out / "co3d", ("box", "ball"), 1, 6, (96, 72), seed=5, points=500)
    options = ShardOptions(image_size=64, max_frames=6, min_frames=4, samples_per_shard=2)
    write_shards(root, out / "shards", options)
    return out / "shards"
