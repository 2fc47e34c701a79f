"""Forward + backward time and peak memory of one multi-view UNet training step over N views.

    python bench/model_step.py              # tiny and mid UNets on CPU, N=5, 64 and 128 px
    python bench/model_step.py --full       # SD 2.1 base size, 256 px, N=5, bf16, on CUDA

Every size and resolution is measured with each multi-view component on its own and all together:
``stock`` (the plain diffusers UNet), ``+cfa`` (cross-frame attention), ``+pose-lora``
(pose-conditioned LoRA), ``+projection`` (voxel projection layers) and ``all``. The projection
layers use the paper's settings (C'=16, G=32, 128 samples per ray, background modelling) unless
``--small-3d``. Weights are random: timing needs no pretrained weights. ``--device``, ``--dtype``
and ``--unet`` override the ``--full`` defaults (e.g. to run that path on a CPU with a tiny UNet);
``--json PATH`` also writes the figures as JSON (bench/json_records.py).
On CPU the peak is the process's resident set (Python and torch included), reset before each
configuration where Linux allows it (/proc/self/clear_refs); on CUDA it is the allocator's peak.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import re
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.commands.options import positive_int
from viewdiff.config import ModelConfig, legacy_values
from viewdiff.model import MultiViewUNet
from viewdiff.tiny import build_unet, sd21_base_unet_config, unet_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # json_records, beside this file
from json_records import JsonRecords, add_json_option  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
UNETS = {
    "sd21": sd21_base_unet_config,
    "tiny": lambda: unet_config("tiny"),
    "mid": lambda: unet_config("mid"),
}
# Which additions each variant switches on (None: the plain UNet, no MultiViewUNet at all).
VARIANTS: dict[str, dict[str, bool] | None] = {
    "stock": None,
    "+cfa": {"cross_frame_attention": True, "pose_lora": False, "projection_layers": False},
    "+pose-lora": {"cross_frame_attention": False, "pose_lora": True, "projection_layers": False},
    "+projection": {"cross_frame_attention": False, "pose_lora": False, "projection_layers": True},
    "all": {"cross_frame_attention": True, "pose_lora": True, "projection_layers": True},
}
SMALL_3D = {"projection_channels": 8, "voxel_grid_size": 8, "render_samples": 8}


def build_model(unet_cfg: dict, variant: str, small_3d: bool, saved_before: bool) -> nn.Module:
    """The UNet of a benchmark variant: stock, or a MultiViewUNet with some additions (the
    paper's, or with ``saved_before`` those of exports saved before the paper's layout)."""
    unet = build_unet(unet_cfg, seed=0)
    switches = VARIANTS[variant]
    if switches is None:
        return unet
    config = dataclasses.replace(
        ModelConfig(),
        **(legacy_values("model") if saved_before else {}),
        **switches,
        **(SMALL_3D if small_3d else {}),
    )
    return MultiViewUNet(unet, config)


def make_step(model: nn.Module, views: int, objects: int, resolution: int, device, dtype):
    """A closure running one forward + backward on random latents of (objects * views) images."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    batch = objects * views
    unet = model.unet if isinstance(model, MultiViewUNet) else model
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, generator=generator)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    latents, text = latents.to(device, dtype), text.to(device, dtype)
    w2c = orbit(views, elevation_deg=20.0, radius=2.5).repeat(objects, 1, 1).to(device)
    K = intrinsics_from_fov(50.0, resolution, resolution).expand(batch, 3, 3).to(device)
    pose = pose_features(K, w2c, (resolution, resolution))

    def step() -> None:
        if isinstance(model, MultiViewUNet):
            out = model(latents, timesteps, text, K, w2c, pose, n_views=views)
        else:
            out = model(latents, timesteps, encoder_hidden_states=text).sample
        out.float().square().mean().backward()

    return step


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory measurement."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    # glibc keeps freed memory mapped: hand it back first, so that the previous configuration's
    # peak does not carry over; then "5" resets the peak resident set (VmHWM, Linux only).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> tuple[float, str]:
    """GiB peak since ``reset_peak`` and what it is: CUDA allocator peak, or peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA peak"
    try:
        kib = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
        return kib / 2**20, "peak RSS"
    except (OSError, AttributeError):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib / 2**20, "process peak RSS so far"


def time_step(step, steps: int, device: torch.device) -> float:
    """Seconds per step, after one warm-up step."""
    step()  # warm-up: allocations, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --full fills in its defaults for what is not given."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="SD 2.1 base size, 256 px, bf16, CUDA")
    parser.add_argument("--views", type=positive_int, default=5, help="N views per object")
    parser.add_argument("--objects", type=positive_int, default=1, help="objects per batch")
    parser.add_argument(
        "--steps", type=positive_int, default=3, help="timed steps per configuration"
    )
    parser.add_argument("--sizes", nargs="+", choices=("tiny", "mid"), default=["tiny", "mid"])
    parser.add_argument("--resolutions", nargs="+", type=positive_int, help="image sizes (px)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--device", help="torch device (default: cpu; cuda with --full)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default fp32; bf16 with --full")
    parser.add_argument("--unet", choices=list(UNETS), help="the --full UNet (default sd21)")
    parser.add_argument("--small-3d", action="store_true", help="C'=8, G=8, 8 samples per ray")
    parser.add_argument(
        "--params-only", action="store_true", help="count the parameters, no step (fast)"
    )
    parser.add_argument(
        "--saved-before",
        action="store_true",
        help="the projection layers of exports saved before the paper's layout (residual after "
        "each transformer, 1x1 stacks, compact 3D UNet: config.LEGACY_DEFAULTS)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    args.dtype = args.dtype or ("bf16" if args.full else "fp32")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"device {args.device} needs CUDA, which is not available here")
    if args.full:
        resolutions = args.resolutions or [256]
        args.grid = [(args.unet or "sd21", res) for res in resolutions]
    else:
        resolutions = args.resolutions or [64, 128]
        args.grid = [(size, res) for size in args.sizes for res in resolutions]
    if any(res % 64 for _, res in args.grid):
        parser.error("resolutions must be multiples of 64 (8x the UNet's downsampling)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark grid and print one line per (size, resolution, variant)."""
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    torch.set_grad_enabled(True)
    records = JsonRecords(args.json)
    layout = "saved-before" if args.saved_before else "paper"
    for size, resolution in args.grid:
        unet_cfg = UNETS[size]() if args.full else unet_config(size)
        for variant in args.variants:
            model = build_model(unet_cfg, variant, args.small_3d, args.saved_before)
            model = model.to(args.device).train()
            if dtype != torch.float32:
                model.to(dtype=dtype)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            if args.params_only:
                added = (
                    params
                    - sum(p.numel() for p in getattr(model, "unet", model).parameters()) / 1e6
                )
                print(
                    f"{size:9s} {variant:12s} {params:8.2f}M params, {added:7.2f}M added  {layout}"
                )
                records.add({"unet": size, "variant": variant, "params_m": params,
                             "added_params_m": added, "layout": layout})  # fmt: skip
                continue
            step = make_step(model, args.views, args.objects, resolution, args.device, dtype)
            reset_peak(args.device)
            seconds = time_step(step, args.steps, args.device)
            images = args.views * args.objects
            peak_gib, peak_kind = peak_memory(args.device)
            print(
                f"{size:9s} {resolution:4d}px {variant:12s} {params:8.2f}M params  "
                f"N={args.views}x{args.objects} {args.dtype}  {seconds:8.3f} s/step  "
                f"{images / seconds:8.2f} images/s  peak {peak_gib:.2f} GiB ({peak_kind})  "
                f"{layout}",
                flush=True,
            )
            records.add({"unet": size, "resolution": resolution, "variant": variant,
                         "params_m": params, "views": args.views, "objects": args.objects,
                         "dtype": args.dtype, "device": args.device.type, "s_per_step": seconds,
                         "images_per_s": images / seconds, "peak_gib": peak_gib,
                         "peak_kind": peak_kind, "layout": layout})  # fmt: skip
            del model, step


if __name__ == "__main__":
    main()
