"""``infer.py cameras``: write an orbit trajectory (or check a cameras.json) and draw the object
box from every view, to see where the cameras look before spending GPU time on them."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewdiff.cameras.cameras_json import read_cameras, write_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands.options import (
    add_orbit_arguments,
    add_out_argument,
    pixel_size,
)
from viewdiff.inference.outputs import output_folder
from viewdiff.visualize import draw_box_views, image_grid


def add_cameras_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py cameras``: a trajectory's cameras.json and a picture of what each view sees."""
    parser = commands.add_parser("cameras", help="write/check a camera trajectory and draw it")
    add_out_argument(parser)
    parser.add_argument("--cameras", type=Path, help="check this cameras.json instead of an orbit")
    add_orbit_arguments(parser, 8, "views on the orbit")
    parser.add_argument(
        "--image-size", type=pixel_size, default=256, help="square image side, pixels"
    )
    parser.set_defaults(run=run_cameras)


def run_cameras(args: argparse.Namespace) -> None:
    """Write cameras.json and cameras.png into ``args.out``."""
    if args.cameras is not None:
        K, w2c, size_hw = read_cameras(args.cameras)
    else:
        size_hw = (args.image_size, args.image_size)
        w2c = orbit(args.views, args.elevation, args.radius)
        K = intrinsics_from_fov(args.fov, *size_hw).expand(args.views, 3, 3)
    output_folder(args.out)
    write_cameras(args.out / "cameras.json", K, w2c, size_hw)
    image_grid(draw_box_views(K, w2c, size_hw)).save(args.out / "cameras.png")
    print(
        f"{w2c.shape[0]} cameras: {args.out / 'cameras.json'}, picture: {args.out / 'cameras.png'}"
    )
