"""``infer.py cameras``: write an orbit trajectory (or check a cameras.json) and draw the object
box from every view, to see where the cameras look before spending GPU time on them."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewdiff.cameras.cameras_json import read_cameras, write_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands.options import (
    add_out_argument,
    field_of_view,
    finite_float,
    pixel_size,
    positive_float,
    view_count,
)
from viewdiff.inference.outputs import output_folder
from viewdiff.visualize import draw_box_views, image_grid


def add_cameras_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py cameras``: a trajectory's cameras.json and a picture of what each view sees."""
    parser = commands.add_parser("cameras", help="write/check a camera trajectory and draw it")
    add_out_argument(parser)
    parser.add_argument("--cameras", type=Path, help="check this cameras.json instead of an orbit")
    parser.add_argument("--views", type=view_count, default=8, help="views on the orbit")
    parser.add_argument(
        "--elevation", type=finite_float, default=30.0, help="degrees above the object"
    )
    parser.add_argument(
        "--radius", type=positive_float, default=4.0, help="distance to the box centre"
    )
    parser.add_argument(
        "--fov", type=field_of_view, default=48.0, help="horizontal field of view, degrees"
    )
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
