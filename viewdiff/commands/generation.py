"""What the generating commands (sample, condition, eval) share: the export, sampler, device
and output options, the trajectory options, and the settings they resolve to."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from viewdiff.commands.options import (
    DTYPES,
    MAX_VIEWS,
    add_base_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_dtype_argument,
    add_out_argument,
    add_seed_argument,
    denoising_steps,
    field_of_view,
    finite_float,
    int_in,
    nonnegative_float,
    pixel_size,
    positive_float,
    view_count,
)
from viewdiff.config import SampleConfig
from viewdiff.inference.autoregressive import check_sample_config
from viewdiff.inference.trajectory import Trajectory, orbit_trajectory, read_trajectory
from viewdiff.prior.load import ExportInfo, MultiViewPrior, chosen_device, load_export
from viewdiff.sampling import SCHEDULERS


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every command that generates: the export, the sampler, device and output."""
    add_checkpoint_argument(parser)
    add_base_argument(parser)
    add_out_argument(parser)
    sampler = parser.add_argument_group("sampler (defaults: the export's sample.* config)")
    sampler.add_argument("--scheduler", choices=list(SCHEDULERS), help="sampler (unipc)")
    sampler.add_argument("--steps", type=denoising_steps, help="denoising steps (10)")
    sampler.add_argument(
        "--guidance", type=nonnegative_float, help="guidance with no view given (7.5)"
    )
    sampler.add_argument(
        "--image-guidance", type=nonnegative_float, help="guidance with views given (1)"
    )
    sampler.add_argument("--window", type=view_count, help="new views per joint batch (10)")
    sampler.add_argument(
        "--max-conditions", type=int_in(0, MAX_VIEWS), help="views given clean per batch (20)"
    )
    sampler.add_argument("--intensity-stats", choices=("zero", "known"), help="(zero)")
    add_seed_argument(sampler, None, "seed of the noise (0); prompt i: seed + i")
    add_device_argument(parser)
    add_dtype_argument(parser)
    parser.add_argument(
        "--fps", type=positive_float, default=10.0, help="frames per second of GIF/MP4"
    )


def add_trajectory_arguments(parser: argparse.ArgumentParser, cameras_flag: str) -> None:
    """The cameras of the generated views: an orbit, or a cameras.json file."""
    group = parser.add_argument_group(
        "trajectory (an orbit around the object box, or a file; defaults: the export's sample.*)"
    )
    group.add_argument(cameras_flag, type=Path, help="cameras.json of the views to generate")
    group.add_argument("--views", type=view_count, default=8, help="views on the orbit")
    group.add_argument(
        "--elevation", type=finite_float, help="degrees above the object (elevation_deg)"
    )
    group.add_argument("--radius", type=positive_float, help="distance to the box centre (radius)")
    group.add_argument(
        "--fov", type=field_of_view, help="horizontal field of view, degrees (fov_deg)"
    )
    group.add_argument(
        "--start-azimuth", type=finite_float, default=0.0, help="first view, degrees"
    )
    group.add_argument(
        "--image-size", type=pixel_size, help="square side (the export's data.image_size)"
    )


def sample_settings(args: argparse.Namespace, export: ExportInfo) -> SampleConfig:
    """The export's sample config with the command line's choices on top, checked."""
    chosen = {
        "scheduler": args.scheduler,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "image_guidance_scale": args.image_guidance,
        "window_views": args.window,
        "max_conditions": args.max_conditions,
        "intensity_stats": args.intensity_stats,
        "seed": args.seed,
        "elevation_deg": getattr(args, "elevation", None),
        "radius": getattr(args, "radius", None),
        "fov_deg": getattr(args, "fov", None),
    }
    settings = dataclasses.replace(
        export.config.sample, **{key: value for key, value in chosen.items() if value is not None}
    )
    check_sample_config(settings)
    return settings


def trajectory_of(
    args: argparse.Namespace, file: Path | None, export: ExportInfo, settings: SampleConfig
) -> Trajectory:
    """The cameras to generate: the file's, or an orbit with the settings' elevation/radius."""
    if file is not None:
        return read_trajectory(file)
    size = args.image_size or export.config.data.image_size
    return orbit_trajectory(
        args.views,
        settings.elevation_deg,
        settings.radius,
        size,
        settings.fov_deg,
        args.start_azimuth,
    )


def load_prior(args: argparse.Namespace) -> MultiViewPrior:
    """The export on the chosen device, in the chosen dtype."""
    device = chosen_device(args.device)
    return load_export(args.checkpoint, device, DTYPES[args.dtype], base=args.base)


def generation_info(
    args: argparse.Namespace, command: str, export: ExportInfo, settings: SampleConfig, **extra
) -> dict:
    """What made a generation: written as generation.json beside it."""
    return {
        "command": command,
        "checkpoint": str(args.checkpoint),
        "export_step": export.step,
        "sample": dataclasses.asdict(settings),
        **extra,
    }
