"""Seconds per multi-view batch at inference: 30 views, 10 UniPC steps, VAE decode included.

    python bench/infer_latency.py              # tiny (64 px) and mid (128 px) on CPU
    python bench/infer_latency.py --full       # SD 2.1 base size, 256 px, fp16, on CUDA

Two batches are timed per size, the two kinds of ViewDiff's generation (Sec. 3.4; the
reference's test script):

- ``text``: 30 new views from text, classifier-free guidance 7.5 (two UNet passes per step);
- ``window``: a sliding-window batch, 20 views given clean at t = 0 and 10 new ones, guidance 1
  (the reference's setting after the first batch); only the 10 new views are decoded.

Weights are random (``viewdiff.tiny``): timing needs no training. The text embeddings are
random too: a 77-token text encoder pass is negligible beside 10 UNet steps over 30 views. The
projection layers use the paper's settings (C'=16, G=32, 128 samples per ray, background) with
``--full`` or ``--paper-3d``, and configs/tiny_cpu.yaml's (C'=8, G=8, 16 samples) otherwise: on a
CPU the paper's grid costs minutes per batch even around a tiny UNet. The reference reports about
15 s for 30 views on an RTX 3090. ``--device``, ``--dtype``, ``--sizes`` and ``--small-3d`` (the
tiny_cpu grid) override the ``--full`` defaults (e.g. to run that path on a CPU with a tiny
UNet); ``--json PATH`` also writes the figures as JSON (bench/json_records.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.commands.options import nonnegative_int, positive_int
from viewdiff.config import ModelConfig
from viewdiff.model import MultiViewUNet
from viewdiff.prior.call import ViewConditions, decode_latents
from viewdiff.sampling import denoise_views, inference_scheduler, initial_noise
from viewdiff.tiny import (
    build_unet,
    build_vae,
    sd21_base_scheduler_config,
    sd21_base_unet_config,
    sd21_base_vae_config,
    unet_config,
    vae_config,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # json_records, beside this file
from json_records import JsonRecords, add_json_option  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SIZES = {
    "tiny": (lambda: unet_config("tiny"), lambda: vae_config("tiny"), 64),
    "mid": (lambda: unet_config("mid"), lambda: vae_config("mid"), 128),
    "sd21": (sd21_base_unet_config, sd21_base_vae_config, 256),
}
TINY_CPU_3D = {"projection_channels": 8, "voxel_grid_size": 8, "render_samples": 16}
# name -> guidance scale; the window batch gives --given views clean, the text batch none
BATCHES = {"text": 7.5, "window": 1.0}


def build(size: str, paper_3d: bool, device: torch.device, dtype: torch.dtype):
    """A random multi-view UNet and VAE of ``size`` on ``device`` in ``dtype``."""
    unet_cfg, vae_cfg, _ = SIZES[size]
    config = dataclasses.replace(ModelConfig(), **({} if paper_3d else TINY_CPU_3D))
    model = MultiViewUNet(build_unet(unet_cfg(), seed=0), config).eval()
    vae = build_vae(vae_cfg(), seed=0).eval()
    model, vae = model.to(device), vae.to(device)
    if dtype != torch.float32:  # diffusers warns at any cast, even a no-op one
        model, vae = model.to(dtype=dtype), vae.to(dtype=dtype)
    return model, vae


def make_batch(model, vae, views: int, given: int, guidance: float, steps: int, resolution: int):
    """A closure generating one batch of ``views`` views (``given`` of them known)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    latent_hw = resolution // 8
    width = model.unet.config.cross_attention_dim
    text = torch.randn(1, 77, width, generator=generator).to(device)
    K = intrinsics_from_fov(48.0, resolution, resolution).expand(1, views, 3, 3).to(device)
    w2c = orbit(views, 30.0, 4.0)[None].to(device)
    pose = pose_features(K, w2c, (resolution, resolution))
    conditions = ViewConditions(text, torch.zeros_like(text), K, w2c, pose, (resolution,) * 2)
    known = torch.zeros(1, views, dtype=torch.bool)
    known[:, :given] = True
    clean = torch.randn(1, views, 4, latent_hw, latent_hw, generator=generator)
    scheduler = inference_scheduler("unipc", sd21_base_scheduler_config())

    def run() -> None:
        noise = initial_noise((1, views, 4, latent_hw, latent_hw), generator)
        latents = denoise_views(
            model, scheduler, noise, conditions, steps, guidance, generator, known, clean
        )
        decode_latents(vae, latents[0, given:])

    return run


def seconds(run, device: torch.device, repeats: int) -> float:
    """Mean seconds of ``run`` after one warm-up call."""
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --full fills in its defaults for what is not given."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="SD 2.1 base, 256 px, fp16, CUDA")
    parser.add_argument(
        "--sizes", nargs="+", choices=list(SIZES), help="default tiny mid; sd21 with --full"
    )
    parser.add_argument("--views", type=positive_int, default=30, help="views per batch")
    parser.add_argument("--steps", type=positive_int, default=10, help="UniPC steps")
    parser.add_argument("--repeats", type=positive_int, default=1, help="timed batches per setting")
    parser.add_argument("--batches", nargs="+", choices=list(BATCHES), default=list(BATCHES))
    parser.add_argument(
        "--given", type=nonnegative_int, default=20, help="views given in the window batch"
    )
    parser.add_argument("--device", help="torch device (default: cpu; cuda with --full)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default fp32; fp16 with --full")
    parser.add_argument("--paper-3d", action="store_true", help="C'=16, G=32, 128 samples/ray")
    parser.add_argument(
        "--small-3d", action="store_true", help="C'=8, G=8, 16 samples/ray, also with --full"
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    args.dtype = args.dtype or ("fp16" if args.full else "fp32")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"device {args.device} needs CUDA, which is not available here")
    if "window" in args.batches and not 0 < args.given < args.views:
        parser.error(f"--given must be in [1, --views={args.views}) for the window batch")
    if args.paper_3d and args.small_3d:
        parser.error("--paper-3d and --small-3d exclude each other")
    args.sizes = args.sizes or (["sd21"] if args.full else ["tiny", "mid"])
    args.paper_3d = (args.paper_3d or args.full) and not args.small_3d
    return args


def main(argv: list[str] | None = None) -> None:
    """Time every (size, batch) and print one line each."""
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    records = JsonRecords(args.json)
    for size in args.sizes:
        model, vae = build(size, args.paper_3d, args.device, dtype)
        resolution = SIZES[size][2]
        for name in args.batches:
            given, guidance = (args.given if name == "window" else 0), BATCHES[name]
            run = make_batch(model, vae, args.views, given, guidance, args.steps, resolution)
            elapsed = seconds(run, args.device, args.repeats)
            new = args.views - given
            print(
                f"{size:5s} {resolution:4d}px {name:6s} {args.views} views ({given} given, "
                f"{new} new, guidance {guidance}) {args.steps} UniPC steps {args.dtype} "
                f"{args.device.type} {'paper' if args.paper_3d else 'tiny_cpu'} 3D: "
                f"{elapsed:8.2f} s/batch  {elapsed / new:7.3f} s/new view",
                flush=True,
            )
            records.add({"size": size, "resolution": resolution, "batch": name,
                         "views": args.views, "given": given, "new": new, "guidance": guidance,
                         "unipc_steps": args.steps, "dtype": args.dtype,
                         "device": args.device.type, "3d": "paper" if args.paper_3d else "tiny_cpu",
                         "s_per_batch": elapsed, "s_per_new_view": elapsed / new})  # fmt: skip
        del model, vae


if __name__ == "__main__":
    main()
