"""``infer.py condition``: novel views of the object in one or more input images."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from viewdiff.commands.generation import (
    add_generation_arguments,
    add_trajectory_arguments,
    generation_info,
    load_prior,
    sample_settings,
    trajectory_of,
)
from viewdiff.config import SampleConfig
from viewdiff.inference.autoregressive import generate_views
from viewdiff.inference.inputs import load_given_views, load_single_view
from viewdiff.inference.outputs import save_generation
from viewdiff.inference.trajectory import Trajectory, default_input_camera, read_trajectory
from viewdiff.output_folders import check_output_folder
from viewdiff.prior.load import read_export


def add_condition_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py condition``: novel views of the object in one or more input images."""
    parser = commands.add_parser("condition", help="generate novel views from input images")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="input views")
    parser.add_argument(
        "--cameras", type=Path, help="cameras.json of the input images (one image: optional)"
    )
    parser.add_argument("--prompt", default="", help="text prompt (default: none)")
    add_trajectory_arguments(parser, "--trajectory")
    add_generation_arguments(parser)
    parser.set_defaults(run=run_condition)


def given_views(
    args: argparse.Namespace, trajectory: Trajectory, settings: SampleConfig
) -> tuple[torch.Tensor, Trajectory]:
    """The input images and their cameras at the trajectory's image size."""
    if args.cameras is not None:
        return load_given_views(
            args.images, read_trajectory(args.cameras), trajectory.image_size_hw
        )
    if len(args.images) != 1:
        raise ValueError(f"{len(args.images)} input images need their cameras: --cameras FILE")
    height, width = trajectory.image_size_hw
    if height != width:
        raise ValueError("a single image without cameras needs a square trajectory")
    camera = default_input_camera(settings.elevation_deg, settings.radius, height, settings.fov_deg)
    return load_single_view(args.images[0], camera)


def run_condition(args: argparse.Namespace) -> None:
    """Generate the trajectory's views with the input images given clean."""
    check_output_folder(args.out)  # first: --out that is a file fails before any compute
    export = read_export(args.checkpoint, args.base)
    settings = sample_settings(args, export)
    trajectory = trajectory_of(args, args.trajectory, export, settings)
    images, cameras = given_views(args, trajectory, settings)
    prior = load_prior(args)
    views = generate_views(
        prior, [args.prompt], trajectory, settings, [settings.seed], images, cameras
    )[0]
    inputs = [str(path) for path in args.images]
    info = generation_info(
        args, "condition", export, settings, prompt=args.prompt, seed=settings.seed, inputs=inputs
    )
    save_generation(args.out, views, trajectory, info, images, cameras, fps=args.fps)
    print(f"{len(images)} input views -> {len(trajectory)} novel views in {args.out}/")
