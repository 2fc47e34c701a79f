"""Use a trained multi-view prior: ``python infer.py <command> ...``.

Commands:
  cameras   write an orbit trajectory (or check a cameras.json) and draw the object box from
            every view, to see where the cameras look before spending GPU time on them
  render    render a 3D Gaussian scene (3DGS PLY) around an orbit: PNG frames, GIF/MP4, cameras
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from viewdiff.cameras import intrinsics_from_fov, orbit
from viewdiff.cameras_json import read_cameras, write_cameras
from viewdiff.scene.gaussians import read_gaussian_ply
from viewdiff.scene.turntable import mp4_available, render_turntable, save_turntable
from viewdiff.visualize import draw_box_views, image_grid


def add_cameras_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py cameras``: a trajectory's cameras.json and a picture of what each view sees."""
    parser = commands.add_parser("cameras", help="write/check a camera trajectory and draw it")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cameras", type=Path, help="check this cameras.json instead of an orbit")
    parser.add_argument("--views", type=int, default=8, help="views on the orbit")
    parser.add_argument("--elevation", type=float, default=30.0, help="degrees above the object")
    parser.add_argument("--radius", type=float, default=4.0, help="distance to the box centre")
    parser.add_argument("--fov", type=float, default=48.0, help="horizontal field of view, degrees")
    parser.add_argument("--image-size", type=int, default=256, help="square image side, pixels")
    parser.set_defaults(run=run_cameras)


def run_cameras(args: argparse.Namespace) -> None:
    """Write cameras.json and cameras.png into ``args.out``."""
    if args.cameras is not None:
        K, w2c, size_hw = read_cameras(args.cameras)
    else:
        size_hw = (args.image_size, args.image_size)
        w2c = orbit(args.views, args.elevation, args.radius)
        K = intrinsics_from_fov(args.fov, *size_hw).expand(args.views, 3, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    write_cameras(args.out / "cameras.json", K, w2c, size_hw)
    image_grid(draw_box_views(K, w2c, size_hw)).save(args.out / "cameras.png")
    print(
        f"{w2c.shape[0]} cameras: {args.out / 'cameras.json'}, picture: {args.out / 'cameras.png'}"
    )


def add_render_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py render``: a turntable of a Gaussian scene, with the cameras it used."""
    parser = commands.add_parser("render", help="render a 3DGS PLY scene around an orbit")
    parser.add_argument("--scene", type=Path, required=True, help="3D Gaussian splatting PLY")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--views", type=int, default=60, help="frames on the orbit")
    parser.add_argument("--elevation", type=float, default=30.0, help="degrees above the object")
    parser.add_argument("--radius", type=float, default=4.0, help="distance to the box centre")
    parser.add_argument("--size", type=int, default=256, help="square image side, pixels")
    parser.add_argument("--fov", type=float, default=48.0, help="horizontal field of view, degrees")
    parser.add_argument("--backend", choices=("auto", "torch", "gsplat"), default="auto")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument(
        "--background",
        type=float,
        nargs=3,
        default=(1.0, 1.0, 1.0),
        metavar=("R", "G", "B"),
        help="background colour in [0, 1]",
    )
    parser.add_argument("--fps", type=float, default=20.0, help="frames per second of GIF/MP4")
    parser.set_defaults(run=run_render)


def run_render(args: argparse.Namespace) -> None:
    """Write frames/*.png, turntable.gif, turntable.mp4 and cameras.json into ``args.out``."""
    if not args.scene.is_file():
        raise ValueError(f"scene file not found: {args.scene}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
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


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    add_cameras_command(commands)
    add_render_command(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:
        parser.exit(2, f"infer.py {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
