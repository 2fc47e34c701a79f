"""Random multi-view exports for the benchmarks: timing needs no trained weights.

``random_export(work, "tiny" | "sd21", ...)`` writes a random base pipeline (the tiny one, or SD
2.1 base's UNet and VAE with a one-layer text encoder of its width) and an inference export of a
random multi-view UNet on it, with the paper's 3D settings or the tiny CPU ones.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig

from viewdiff.config import Config, DataConfig, ModelConfig, TrainConfig
from viewdiff.diffusion import noise_scheduler
from viewdiff.model import MultiViewUNet
from viewdiff.tiny import (
    BOS_TOKEN,
    EOS_TOKEN,
    build_text_encoder,
    build_tiny_pipeline,
    build_unet,
    build_vae,
    save_pipeline,
    sd21_base_scheduler_config,
    sd21_base_unet_config,
    sd21_base_vae_config,
    text_encoder_config,
    write_tokenizer,
)
from viewdiff.training.export import export_model

TINY_3D = {"pose_lora_rank": 4, "projection_channels": 8, "voxel_grid_size": 8,
           "render_samples": 16}  # fmt: skip


def sd21_base(folder: Path) -> Path:
    """A random base pipeline of SD 2.1 base's UNet and VAE; a one-layer text encoder of its
    width (the prompt is encoded once per run: its size does not matter for a step)."""
    vocab = write_tokenizer(folder / "tokenizer")
    text = text_encoder_config("tiny", len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
    text = CLIPTextConfig(**{**text.to_dict(), "hidden_size": 1024, "intermediate_size": 4096,
                             "num_attention_heads": 16, "num_hidden_layers": 1})  # fmt: skip
    components = {
        "unet": build_unet(sd21_base_unet_config(), seed=0),
        "vae": build_vae(sd21_base_vae_config(), seed=1),
        "text_encoder": build_text_encoder(text, seed=2),
        "scheduler": DDPMScheduler.from_config(sd21_base_scheduler_config()),
    }
    return save_pipeline(folder, components)


def random_export(work: Path, size: str, image_size: int, n_views: int, paper_3d: bool) -> Path:
    """An export of a random multi-view prior on a random base of ``size`` (tiny or sd21)."""
    base = sd21_base(work / "base") if size == "sd21" else build_tiny_pipeline(work / "base")
    model_config = ModelConfig(pretrained_model=str(base), **({} if paper_3d else TINY_3D))
    config = Config(model=model_config, data=DataConfig(image_size=image_size, n_views=n_views),
                    train=TrainConfig(output_dir=str(work / "run")))  # fmt: skip
    model = MultiViewUNet(UNet2DConditionModel.from_pretrained(base / "unet"), model_config)
    base_schedule = dict(DDPMScheduler.load_config(base / "scheduler"))
    schedule = noise_scheduler(base_schedule, zero_terminal_snr=True, prediction_type="epsilon")
    return export_model(model, config, schedule, step=0)
