"""``infer.py render``: render a 3D Gaussian scene (3DGS PLY) around an orbit: PNG frames,
GIF/MP4 and the cameras it used."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewdiff.commands.options import (
    add_background_argument,
    add_device_argument,
    add_orbit_arguments,
    add_out_argument,
    pixel_size,
    positive_float,
)
from viewdiff.output_folders import check_output_folder
from viewdiff.prior.load import chosen_device
from viewdiff.scene.gaussians import read_gaussian_ply
from viewdiff.scene.turntable import mp4_available, render_turntable, save_turntable


def add_render_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py render``: a turntable of a Gaussian scene, with the cameras it used."""
    parser = commands.add_parser("render", help="render a 3DGS PLY scene around an orbit")
    parser.add_argument("--scene", type=Path, required=True, help="3D Gaussian splatting PLY")
    add_out_argument(parser)
    add_orbit_arguments(parser, 60, "frames on the orbit")
    parser.add_argument("--size", type=pixel_size, default=256, help="square image side, pixels")
    parser.add_argument("--backend", choices=("auto", "torch", "gsplat"), default="auto")
    add_device_argument(parser)
    add_background_argument(parser, "background colour in [0, 1] (white)", (1.0, 1.0, 1.0))
    parser.add_argument(
        "--fps", type=positive_float, default=20.0, help="frames per second of GIF/MP4"
    )
    parser.set_defaults(run=run_render)


def run_render(args: argparse.Namespace) -> None:
    """Write frames/*.png, turntable.gif, turntable.mp4 and cameras.json into ``args.out``."""
    check_output_folder(args.out)  # first: --out that is a file fails before any compute
    if not args.scene.is_file():
        raise ValueError(f"scene file not found: {args.scene}")
    device = chosen_device(args.device)
    scene = read_gaussian_ply(args.scene, device=device)
    turntable = render_turntable(
        scene,
        args.views,
        args.elevation,
        args.radius,
        args.size,
        args.fov,
        args.background,
        args.backend,
    )
    written = save_turntable(args.out, turntable, fps=args.fps)
    print(
        f"{scene.num_gaussians} Gaussians, {args.views} views: {args.out}/frames/, "
        + ", ".join(path.name for path in written[args.views :])
    )
    if not mp4_available():
        print("no MP4: it needs `pip install imageio-ffmpeg`; wrote the GIF only")
