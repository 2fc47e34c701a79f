"""Use a trained multi-view prior: ``python infer.py <command> ...`` (installed:
``viewdiff-infer <command> ...``).

Commands:
  cameras   write an orbit trajectory (or check a cameras.json) and draw the object box from
            every view, to see where the cameras look before spending GPU time on them
  render    render a 3D Gaussian scene (3DGS PLY) around an orbit: PNG frames, GIF/MP4, cameras
  sample    generate posed views of objects from text (one batch, or a sliding window for
            many views): PNGs, a grid, a turntable GIF/MP4 and cameras.json
  condition generate novel views of the object in one or more input images, same outputs
  eval      novel-view synthesis on held-out shards: PSNR/SSIM with and without masks
  fit       fit a 3D Gaussian scene (3DGS PLY) to a folder of generated views
  export    a folder of generated views for nerfstudio / instant-ngp (transforms.json) or COLMAP
  push      an export on the Hugging Face Hub, with a generated model card
  sds       text-to-3D / image-to-3D: distil a 3D Gaussian scene by score distillation
  invert    edit-friendly DDPM inversion of real views (one, or N posed views jointly)
  edit      regenerate an inversion with a target prompt
  edit-scene  TrAME: edit a 3D Gaussian scene with the multi-view prior
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from viewdiff.cameras import intrinsics_from_fov, orbit
from viewdiff.cameras_json import read_cameras, write_cameras
from viewdiff.cli_args import (
    BASE_HELP,
    MAX_VIEWS,
    check_output_folder,
    denoising_steps,
    existing_folder,
    field_of_view,
    finite_float,
    int_in,
    nonnegative_float,
    pixel_size,
    positive_float,
    positive_int,
    unit_float,
    view_count,
)
from viewdiff.config import SampleConfig
from viewdiff.editing.cli import add_edit_command, add_invert_command
from viewdiff.editing.scene_cli import add_edit_scene_command
from viewdiff.inference.autoregressive import check_sample_config, generate_views
from viewdiff.inference.evaluate import format_table, write_results
from viewdiff.inference.heldout import check_heldout_shards, evaluate_heldout
from viewdiff.inference.hub import add_push_command
from viewdiff.inference.inputs import load_given_views, load_single_view
from viewdiff.inference.load import (
    ExportInfo,
    MultiViewPrior,
    chosen_device,
    load_export,
    read_export,
)
from viewdiff.inference.outputs import (
    object_folder_name,
    output_folder,
    read_prompts,
    save_generation,
)
from viewdiff.inference.trajectory import (
    Trajectory,
    default_input_camera,
    orbit_trajectory,
    read_trajectory,
)
from viewdiff.sampling import SCHEDULERS
from viewdiff.scene.export_cli import add_export_command
from viewdiff.scene.fit_cli import add_fit_command
from viewdiff.scene.gaussians import read_gaussian_ply
from viewdiff.scene.turntable import mp4_available, render_turntable, save_turntable
from viewdiff.sds.cli import add_sds_command
from viewdiff.visualize import draw_box_views, image_grid

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_cameras_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py cameras``: a trajectory's cameras.json and a picture of what each view sees."""
    parser = commands.add_parser("cameras", help="write/check a camera trajectory and draw it")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
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


def add_render_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py render``: a turntable of a Gaussian scene, with the cameras it used."""
    parser = commands.add_parser("render", help="render a 3DGS PLY scene around an orbit")
    parser.add_argument("--scene", type=Path, required=True, help="3D Gaussian splatting PLY")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--views", type=view_count, default=60, help="frames on the orbit")
    parser.add_argument(
        "--elevation", type=finite_float, default=30.0, help="degrees above the object"
    )
    parser.add_argument(
        "--radius", type=positive_float, default=4.0, help="distance to the box centre"
    )
    parser.add_argument("--size", type=pixel_size, default=256, help="square image side, pixels")
    parser.add_argument(
        "--fov", type=field_of_view, default=48.0, help="horizontal field of view, degrees"
    )
    parser.add_argument("--backend", choices=("auto", "torch", "gsplat"), default="auto")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument(
        "--background",
        type=unit_float,
        nargs=3,
        default=(1.0, 1.0, 1.0),
        metavar=("R", "G", "B"),
        help="background colour in [0, 1]",
    )
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


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every command that generates: the export, the sampler, device and output."""
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="inference export (<output_dir>/model)"
    )
    parser.add_argument("--base", type=existing_folder, metavar="DIR", help=BASE_HELP)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
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
    sampler.add_argument("--seed", type=int, help="seed of the noise (0); prompt i: seed + i")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="model dtype")
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


def add_sample_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py sample``: views of objects described by text, on a trajectory."""
    parser = commands.add_parser("sample", help="generate posed views from text")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="one text prompt")
    prompt.add_argument("--prompts", type=Path, help="a text file, one prompt per line")
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="prompts generated together"
    )
    add_trajectory_arguments(parser, "--cameras")
    add_generation_arguments(parser)
    parser.set_defaults(run=run_sample)


def run_sample(args: argparse.Namespace) -> None:
    """Generate every prompt's views; one folder per prompt (``--out`` itself for --prompt)."""
    check_output_folder(args.out)  # first: --out that is a file fails before any compute
    export = read_export(args.checkpoint, args.base)  # all is checked before any model is built
    settings = sample_settings(args, export)
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    trajectory = trajectory_of(args, args.cameras, export, settings)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    prior = load_prior(args)
    for start in range(0, len(prompts), args.batch_size):
        batch = list(enumerate(prompts))[start : start + args.batch_size]
        seeds = [settings.seed + index for index, _ in batch]
        images = generate_views(prior, [p for _, p in batch], trajectory, settings, seeds)
        for (index, prompt), views, seed in zip(batch, images, seeds, strict=True):
            out = (
                args.out
                if args.prompt is not None
                else args.out / object_folder_name(index, prompt)
            )
            info = generation_info(args, "sample", export, settings, prompt=prompt, seed=seed)
            save_generation(out, views, trajectory, info, fps=args.fps)
            print(
                f"{prompt!r}: {len(trajectory)} views in {out}/ (grid.png, turntable, cameras.json)"
            )


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


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py eval``: novel-view synthesis on held-out shards, PSNR and SSIM."""
    parser = commands.add_parser("eval", help="PSNR/SSIM of novel views on held-out shards")
    parser.add_argument("--shards", required=True, help="held-out shard folder or URL pattern")
    parser.add_argument(
        "--known", type=int_in(1, MAX_VIEWS), default=1, help="true views given per object"
    )
    parser.add_argument(
        "--views", type=view_count, help="views per object (the export's data.n_views)"
    )
    parser.add_argument("--max-objects", type=positive_int, help="stop after this many objects")
    parser.add_argument("--categories", nargs="+", help="default: the export's data.categories")
    parser.add_argument(
        "--view-sampling", choices=("random", "spread"), default="random", help="which N views"
    )
    add_generation_arguments(parser)
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    """Evaluate, write eval.json and compare/*.png, print the table."""
    check_output_folder(args.out)  # first: --out that is a file fails before any compute
    export = read_export(args.checkpoint, args.base)
    settings = sample_settings(args, export)
    data = dataclasses.replace(
        export.config.data,
        shards=str(args.shards),
        n_views=args.views if args.views is not None else export.config.data.n_views,
        categories=tuple(args.categories or export.config.data.categories),
        view_sampling=args.view_sampling,
        num_workers=0,
        shuffle_buffer=1,
    )
    check_heldout_shards(data)  # a wrong --shards fails now
    if not 0 <= args.known < data.n_views:
        raise ValueError(f"--known must be in [0, {data.n_views}) for {data.n_views} views")
    prior = load_prior(args)
    results = evaluate_heldout(
        prior, data, args.known, settings, args.out, args.max_objects, settings.seed
    )
    document = {"checkpoint": str(args.checkpoint), "known": args.known, "n_views": data.n_views}
    write_results(
        args.out / "eval.json", results, {**document, "sample": dataclasses.asdict(settings)}
    )
    print(format_table(results))
    print(f"eval.json and compare/*.png in {args.out}/")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    add_cameras_command(commands)
    add_render_command(commands)
    add_sample_command(commands)
    add_condition_command(commands)
    add_eval_command(commands)
    add_fit_command(commands)
    add_export_command(commands)
    add_push_command(commands)
    add_sds_command(commands)
    add_invert_command(commands)
    add_edit_command(commands)
    add_edit_scene_command(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:  # input errors only
        parser.exit(2, f"infer.py {args.command}: error: {error}\n")
    return 0


def console_main() -> None:
    """The ``viewdiff-infer`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
