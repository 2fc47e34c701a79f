"""Seconds per score distillation step, split into render / encode / prior / backward.

    python bench/sds_step.py                    # CPU: the tiny random prior and the toy prior
    python bench/sds_step.py --full             # GPU: an SD 2.1-size random prior, 256 px, N=4

One step renders B x N views of a Gaussian scene, encodes them with gradient, runs the prior
jointly on them with guidance (two UNet passes) and backpropagates through the encoder and the
rasteriser into the scene (``viewdiff.sds.loop.ScoreDistillation.step``). ``--full`` builds a
random prior of SD 2.1 base's size with the paper's 3D settings (C'=16, G=32, 128 samples per ray,
background) and times it in bf16 on CUDA, the renderer on gsplat when installed; the goal there
is 10k steps in <= 10 minutes on one H100, i.e. <= 60 ms per step. The phases are synchronised
on CUDA, which costs a little: the total is the honest s/step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig  # noqa: E402

from viewdiff.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from viewdiff.diffusion import noise_scheduler  # noqa: E402
from viewdiff.inference.load import load_export  # noqa: E402
from viewdiff.model import MultiViewUNet  # noqa: E402
from viewdiff.sds.cameras import CameraRanges  # noqa: E402
from viewdiff.sds.config import SdsConfig  # noqa: E402
from viewdiff.sds.loop import PhaseTimer, ScoreDistillation, initial_scene  # noqa: E402
from viewdiff.tiny import (  # noqa: E402
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
from viewdiff.toy.assets import TOY_MULTIVIEW  # noqa: E402
from viewdiff.training.export import export_model  # noqa: E402

RANGES = CameraRanges((3.5, 4.5), (20.0, 40.0), (30.0, 45.0), "bench")
TINY_3D = {"pose_lora_rank": 4, "projection_channels": 8, "voxel_grid_size": 8,
           "render_samples": 16}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def time_steps(export: Path, config: SdsConfig, device: str, dtype: str, steps: int) -> dict:
    """Mean seconds per step and per phase after two warm-up steps."""
    prior = load_export(export, device, DTYPES[dtype])
    run = ScoreDistillation(prior, config, "a red ball", initial_scene(config), RANGES)
    for _ in range(2):
        run.step()
    run.timer = PhaseTimer(prior.device, synchronize=True)
    if prior.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run.step()
    if prior.device.type == "cuda":
        torch.cuda.synchronize()
    total = (time.perf_counter() - start) / steps
    return {"total": total, **{k: v / steps for k, v in run.timer.seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    """Time the chosen priors and print one line each."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="SD 2.1 size, 256 px, bf16, CUDA")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per prior")
    parser.add_argument("--views", type=int, default=4, help="N views per group")
    parser.add_argument("--gaussians", type=int, default=4096, help="Gaussians of the scene")
    parser.add_argument("--device", help="torch device (default: cpu; cuda with --full)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if args.full else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device} needs CUDA, which is not available here")
    config = SdsConfig(steps=10_000, views=args.views, num_gaussians=args.gaussians,
                       guidance_scale=100.0, densify_until=0)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as work:
        if args.full:
            export = random_export(Path(work), "sd21", 256, args.views, paper_3d=True)
            rows.append(("sd21 random, 256 px, paper 3D, bf16", export, 256, "bf16"))
        else:
            export = random_export(Path(work), "tiny", 64, args.views, paper_3d=False)
            rows.append(("tiny random, 64 px", export, 64, "fp32"))
            rows.append(("toy prior, 64 px", TOY_MULTIVIEW, 64, "fp32"))
        for name, export, size, dtype in rows:
            settings = dataclasses.replace(config, image_size=size)
            times = time_steps(export, settings, device, dtype, args.steps)
            phases = "  ".join(f"{k} {v * 1000:7.1f}" for k, v in times.items() if k != "total")
            print(f"{name:40s} N={args.views} {device}: {times['total'] * 1000:8.1f} ms/step  "
                  f"({phases} ms)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
