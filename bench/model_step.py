"""Forward + backward time and peak memory of one UNet training step over N views.

    python bench/model_step.py                 # tiny and mid UNets on CPU, N=5, 64 and 128 px
    python bench/model_step.py --full          # SD 2.1 base size, 256 px, N=5, bf16, on CUDA

Weights are random (timing needs no pretrained weights). For now this measures the stock UNet,
the baseline that the multi-view additions (cross-frame attention, pose LoRA, projection
layers) are compared against once they exist.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from viewdiff.tiny import build_unet, sd21_base_unet_config, unet_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_step(unet, views: int, objects: int, resolution: int, steps: int, device, dtype) -> float:
    """Seconds per forward+backward step on random latents of (objects * views) images."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    batch = objects * views
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, generator=generator)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    latents, text, timesteps = (
        latents.to(device, dtype),
        text.to(device, dtype),
        timesteps.to(device),
    )

    def step() -> None:
        out = unet(latents, timesteps, encoder_hidden_states=text).sample
        out.float().square().mean().backward()

    step()  # warm-up: allocations, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def peak_memory(device: torch.device) -> str:
    """Peak memory so far: CUDA allocator peak, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA peak)"
    return (
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"
    )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark grid and print one line per configuration."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="SD 2.1 base size, 256 px, bf16, CUDA")
    parser.add_argument("--views", type=int, default=5, help="N views per object")
    parser.add_argument("--objects", type=int, default=1, help="objects per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument(
        "--sizes", nargs="+", choices=("tiny", "mid"), default=["tiny", "mid"], help="CPU sizes"
    )
    args = parser.parse_args(argv)
    if args.full:
        if not torch.cuda.is_available():
            parser.error("--full needs a CUDA device")
        device, dtype = torch.device("cuda"), torch.bfloat16
        grid = [("sd21-base", sd21_base_unet_config(), 256)]
    else:
        device, dtype = torch.device("cpu"), torch.float32
        grid = [(size, unet_config(size), res) for size in args.sizes for res in (64, 128)]
    torch.set_grad_enabled(True)
    for name, config, resolution in grid:
        unet = build_unet(config).to(device).train()
        if dtype != torch.float32:
            unet.to(dtype=dtype)
        params = sum(p.numel() for p in unet.parameters()) / 1e6
        seconds = time_step(unet, args.views, args.objects, resolution, args.steps, device, dtype)
        images = args.views * args.objects
        print(
            f"{name:10s} {params:7.1f}M params  {resolution:4d}px  N={args.views}x{args.objects}  "
            f"{seconds:7.3f} s/step  {images / seconds:8.2f} images/s  peak {peak_memory(device)}"
        )


if __name__ == "__main__":
    main()
