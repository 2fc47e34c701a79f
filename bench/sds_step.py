"""Seconds per score distillation step, split into render / encode / prior / backward.

    python bench/sds_step.py                    # CPU: the tiny random prior and the toy prior
    python bench/sds_step.py --full             # GPU: an SD 2.1-size random prior, 256 px, N=4

One step renders B x N views of a Gaussian scene, encodes them with gradient, runs the prior
jointly on them with guidance (two UNet passes) and backpropagates through the encoder and the
rasteriser into the scene (``viewdiff.sds.loop.ScoreDistillation.step``). ``--full`` builds a
random prior of SD 2.1 base's size with the paper's 3D settings (C'=16, G=32, 128 samples per ray,
background) and times it in bf16 on CUDA, the renderer on gsplat when installed; the goal there
is 10k steps in <= 10 minutes on one H100, i.e. <= 60 ms per step. The phases are synchronised
on CUDA, which costs a little: the total is the honest s/step. ``--device``, ``--dtype``,
``--size tiny`` (the tiny random prior at 64 px) and ``--small-3d`` (the tiny_cpu grid) override
the ``--full`` defaults (e.g. to run that path on a CPU); ``--json PATH`` also writes the figures
as JSON (bench/json_records.py).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # random_prior, json_records

import torch  # noqa: E402
from json_records import JsonRecords, add_json_option  # noqa: E402
from random_prior import random_export  # noqa: E402

from viewdiff.commands.options import positive_int
from viewdiff.prior.load import load_export  # noqa: E402
from viewdiff.sds.cameras import CameraRanges  # noqa: E402
from viewdiff.sds.config import SDS_FIT, SdsConfig  # noqa: E402
from viewdiff.sds.loop import PhaseTimer, ScoreDistillation, initial_scene  # noqa: E402
from viewdiff.toy.assets import TOY_MULTIVIEW  # noqa: E402

RANGES = CameraRanges((3.5, 4.5), (20.0, 40.0), (30.0, 45.0), "bench")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESOLUTIONS = {"sd21": 256, "tiny": 64}  # the --full prior's render size, by --size


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
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per prior")
    parser.add_argument("--views", type=positive_int, default=4, help="N views per group")
    parser.add_argument(
        "--gaussians", type=positive_int, default=4096, help="Gaussians of the scene"
    )
    parser.add_argument("--device", help="torch device (default: cpu; cuda with --full)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default fp32; bf16 with --full")
    parser.add_argument(
        "--size", choices=list(RESOLUTIONS), default="sd21", help="the --full prior (sd21)"
    )
    parser.add_argument(
        "--small-3d", action="store_true", help="the --full prior with the tiny_cpu 3D settings"
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if args.full else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device} needs CUDA, which is not available here")
    dtype = args.dtype or ("bf16" if args.full else "fp32")
    config = SdsConfig(steps=10_000, views=args.views, num_gaussians=args.gaussians,
                       guidance_scale=100.0,
                       fit=dataclasses.replace(SDS_FIT, densify_until=0))  # fmt: skip
    rows, records = [], JsonRecords(args.json)
    with tempfile.TemporaryDirectory() as work:
        if args.full:
            size, paper_3d = RESOLUTIONS[args.size], not args.small_3d
            export = random_export(Path(work), args.size, size, args.views, paper_3d=paper_3d)
            grid = "paper" if paper_3d else "tiny_cpu"
            rows.append((f"{args.size} random, {size} px, {grid} 3D, {dtype}", export, size, dtype))
        else:
            export = random_export(Path(work), "tiny", 64, args.views, paper_3d=False)
            rows.append(("tiny random, 64 px", export, 64, dtype))
            rows.append(("toy prior, 64 px", TOY_MULTIVIEW, 64, dtype))
        for name, export, size, dtype in rows:
            settings = dataclasses.replace(config, image_size=size)
            times = time_steps(export, settings, device, dtype, args.steps)
            phases = "  ".join(f"{k} {v * 1000:7.1f}" for k, v in times.items() if k != "total")
            print(f"{name:40s} N={args.views} {device}: {times['total'] * 1000:8.1f} ms/step  "
                  f"({phases} ms)", flush=True)  # fmt: skip
            records.add({"prior": name, "resolution": size, "views": args.views,
                         "gaussians": args.gaussians, "device": device, "dtype": dtype,
                         **{f"{k}_ms": v * 1000 for k, v in times.items()}})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
