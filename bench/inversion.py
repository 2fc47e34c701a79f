"""Seconds to invert and to edit N views through the edit-friendly DDPM noise space.

    python bench/inversion.py                 # CPU: the tiny random export and the toy prior
    python bench/inversion.py --full          # GPU: an SD 2.1-size random prior, 256 px, bf16

Inverting costs one guided prior call per step over all N views jointly (plus drawing the
independent x_k); editing from T_skip costs N - T_skip calls. Timed at the paper's 100 steps
(``--steps``) with skip 36, on random weights where the timing needs no training. ``--device``,
``--dtype``, ``--size tiny`` (the tiny random prior at 64 px) and ``--small-3d`` (the tiny_cpu
grid) override the ``--full`` defaults (e.g. to run that path on a CPU); ``--json PATH`` also
writes the figures as JSON (bench/json_records.py).
"""

from __future__ import annotations

import argparse
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

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit  # noqa: E402
from viewdiff.commands.options import nonnegative_int, positive_int
from viewdiff.editing.editing_model import denoiser, load_editing_model  # noqa: E402
from viewdiff.editing.inversion import generate, invert  # noqa: E402
from viewdiff.inference.trajectory import Trajectory  # noqa: E402
from viewdiff.toy.assets import TOY_MULTIVIEW  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
RESOLUTIONS = {"sd21": 256, "tiny": 64}  # the --full prior's image size, by --size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(export: Path, views: int, steps: int, skip: int, device: str, dtype: str) -> tuple:
    """Seconds to invert and to edit ``views`` views of one object."""
    editing = load_editing_model(export, device, DTYPES[dtype])
    size = editing.image_size
    cameras = Trajectory(intrinsics_from_fov(40, size, size).expand(views, 3, 3),
                         orbit(views, 30, 4.0), (size, size))  # fmt: skip
    x0 = torch.randn(views, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    x0 = x0.to(editing.device)
    scheduler = editing.scheduler()
    source = denoiser(editing, "a red ball", 3.5, cameras)
    target = denoiser(editing, "a blue ball", 15.0, cameras)
    _sync(editing.device)
    start = time.perf_counter()
    inversion = invert(source, scheduler, x0, steps, torch.Generator().manual_seed(1))
    _sync(editing.device)
    middle = time.perf_counter()
    generate(target, scheduler, inversion, skip)
    _sync(editing.device)
    return middle - start, time.perf_counter() - middle


def main(argv: list[str] | None = None) -> int:
    """Time and print one line per model."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="SD 2.1 size, 256 px, bf16, CUDA")
    parser.add_argument("--views", type=positive_int, default=4, help="N views inverted jointly")
    parser.add_argument("--steps", type=positive_int, default=100, help="DDPM steps (paper: 100)")
    parser.add_argument(
        "--skip", type=nonnegative_int, default=36, help="T_skip of the edit (paper: 36)"
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
    records = JsonRecords(args.json)
    with tempfile.TemporaryDirectory() as work:
        if args.full:
            size, paper_3d = RESOLUTIONS[args.size], not args.small_3d
            export = random_export(Path(work), args.size, size, args.views, paper_3d)
            grid = "paper" if paper_3d else "tiny_cpu"
            rows = [(f"{args.size} random, {size} px, {grid} 3D, {dtype}", export, dtype)]
        else:
            rows = [("tiny random, 64 px", random_export(Path(work), "tiny", 64, args.views, False),
                     dtype), ("toy prior, 64 px", TOY_MULTIVIEW, dtype)]  # fmt: skip
        for name, export, dtype in rows:
            inverting, editing = time_model(
                export, args.views, args.steps, args.skip, device, dtype
            )
            edit_steps = args.steps - args.skip
            print(f"{name:38s} N={args.views} {device}: invert {args.steps} steps "
                  f"{inverting:7.2f} s, edit {edit_steps} steps {editing:7.2f} s")  # fmt: skip
            records.add({"prior": name, "views": args.views, "device": device, "dtype": dtype,
                         "invert_steps": args.steps, "invert_s": inverting,
                         "edit_steps": edit_steps, "edit_s": editing})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
