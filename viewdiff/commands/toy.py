"""The toy world's commands: ``python -m viewdiff.toy pretrain|ship|picture|renders ...``
(``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viewdiff.commands.options import (
    add_checkpoint_argument,
    add_out_argument,
    add_seed_argument,
    int_in,
    positive_int,
)
from viewdiff.config import load_config
from viewdiff.data.raycast import render_object
from viewdiff.data.synthetic import sequence_object
from viewdiff.data.synthetic_cameras import hand_held_orbit, sample_intrinsics
from viewdiff.data.toy_objects import TOY_SHAPES
from viewdiff.output_folders import check_output_folder
from viewdiff.prior.base_record import BASE_MODEL_FILE
from viewdiff.prior.load import load_export
from viewdiff.run_lock import lock_folder, released_locks
from viewdiff.toy.assets import TOY_ASSETS, TOY_MULTIVIEW
from viewdiff.toy.pretrain import PretrainConfig, pretrain
from viewdiff.toy.quality import TOY_CROPS, prior_views, toy_orbit
from viewdiff.toy.ship import TOY_SDS_PRESET, ship_toy
from viewdiff.toy.t2i_training import UNetTraining
from viewdiff.toy.vae_training import VaeTraining
from viewdiff.visualize import image_grid, to_pil

TOY_STYLES = tuple(TOY_CROPS)  # the toy worlds: "toy" (plain), "toy_sided"
PICTURE_PROMPTS = ["a red ball", "a blue box", "a green can", "an orange box", "a purple can"]


def add_pretrain_command(commands: argparse._SubParsersAction) -> None:
    """``pretrain``: the toy Stable Diffusion from scratch."""
    parser = commands.add_parser("pretrain", help="pretrain the toy Stable Diffusion from scratch")
    parser.add_argument("--shards", type=Path, required=True, help="toy training shard folder")
    parser.add_argument("--heldout", type=Path, required=True, help="held-out toy shard folder")
    add_out_argument(parser, "run folder (resumed if present)")
    add_seed_argument(parser)
    parser.add_argument("--vae-steps", type=positive_int, default=VaeTraining.steps)
    parser.add_argument("--vae-batch-size", type=positive_int, default=VaeTraining.batch_size)
    parser.add_argument("--unet-steps", type=positive_int, default=UNetTraining.steps)
    parser.add_argument("--unet-batch-size", type=positive_int, default=UNetTraining.batch_size)
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=VaeTraining.checkpoint_every,
        help="steps between the stages' resumable checkpoints",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads (default: torch's own choice)",
    )
    parser.set_defaults(run=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    """Pretrain and print where the pipeline is."""
    for name in ("shards", "heldout"):
        if not (getattr(args, name) / "manifest.json").is_file():
            raise ValueError(f"--{name} {getattr(args, name)}: no manifest.json (a shard folder?)")
    check_output_folder(args.out)
    lock_folder(args.out, "python -m viewdiff.toy pretrain")  # one run per --out: it resumes
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = PretrainConfig(
        seed=args.seed,
        vae=VaeTraining(
            steps=args.vae_steps,
            batch_size=args.vae_batch_size,
            checkpoint_every=args.checkpoint_every,
        ),
        unet=UNetTraining(
            steps=args.unet_steps,
            batch_size=args.unet_batch_size,
            checkpoint_every=args.checkpoint_every,
        ),
    )
    folder = pretrain(args.shards, args.heldout, args.out, config)
    print(f"toy Stable Diffusion: {folder} (report {args.out / 'pretrain.json'})")
    return 0


def add_ship_command(commands: argparse._SubParsersAction) -> None:
    """``ship``: the base and the multi-view export into the package's assets, in fp16."""
    parser = commands.add_parser("ship", help="copy the toy base and prior into the package")
    parser.add_argument("--base", type=Path, required=True, help="pretrained SD folder (DIR/sd)")
    add_checkpoint_argument(parser, "train.py's RUN/model export")
    add_out_argument(parser, "(viewdiff/assets/toy)", default=TOY_ASSETS)
    parser.add_argument(
        "--sds-config",
        type=Path,
        default=TOY_SDS_PRESET,
        help="SDS preset the shipped export carries (configs/sds_tiny.yaml)",
    )
    parser.set_defaults(run=run_ship)


def run_ship(args: argparse.Namespace) -> int:
    """Ship and print the size."""
    check_output_folder(args.out)
    report = args.base.parent / "pretrain.json"
    provenance = {
        "made_by": "make toy (see the README)",
        "pretrain": json.loads(report.read_text()) if report.is_file() else None,
        "multiview": json.loads((args.checkpoint / BASE_MODEL_FILE).read_text())
        if (args.checkpoint / BASE_MODEL_FILE).is_file()
        else None,
    }
    sds = load_config(args.sds_config).sds
    size = ship_toy(args.base, args.checkpoint, args.out, provenance, sds)
    print(f"shipped the toy world to {args.out} ({size:.1f} MB)")
    return 0


def add_picture_command(commands: argparse._SubParsersAction) -> None:
    """``picture``: one grid of the prior's joint views, a row per prompt (the README's)."""
    parser = commands.add_parser("picture", help="a grid of the toy prior's joint views")
    add_checkpoint_argument(parser, "(the shipped)", default=TOY_MULTIVIEW)
    add_out_argument(parser, "PNG file to write")
    parser.add_argument("--prompts", nargs="+", default=PICTURE_PROMPTS, help="one row each")
    parser.add_argument(
        "--views", type=int_in(1, 16), default=8, help="views on the default orbit (1 .. 16)"
    )
    parser.add_argument(
        "--scale", type=int_in(1, 16), default=2, help="pixel repetition of the picture"
    )
    add_seed_argument(parser)
    parser.set_defaults(run=run_picture)


def run_picture(args: argparse.Namespace) -> int:
    """Generate and save the grid."""
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the PNG file to write")
    prior = load_export(args.checkpoint)
    settings = prior.info.config.sample
    cameras = toy_orbit(settings, args.views, prior.info.config.data.image_size)
    views = prior_views(prior, args.prompts, cameras, settings, args.seed)  # (P, V, 3, H, W)
    grid = image_grid([to_pil(view * 2 - 1) for view in views.flatten(0, 1)], columns=args.views)
    grid = grid.resize(
        (grid.width * args.scale, grid.height * args.scale), Image.Resampling.NEAREST
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"{len(args.prompts)} prompts x {args.views} joint views: {args.out}")
    return 0


def add_renders_command(commands: argparse._SubParsersAction) -> None:
    """``renders``: a grid of true renders of a toy world, an object per row."""
    parser = commands.add_parser("renders", help="a grid of a toy world's true renders")
    parser.add_argument("--style", choices=TOY_STYLES, default="toy_sided", help="which world")
    parser.add_argument("--objects", type=int_in(1, 60), default=6, help="rows (shapes in turn)")
    parser.add_argument("--views", type=int_in(1, 16), default=8, help="views around each")
    parser.add_argument("--size", type=int_in(16, 512), default=96, help="pixels per view")
    add_seed_argument(parser)
    add_out_argument(parser, "PNG file to write")
    parser.set_defaults(run=run_renders)


def run_renders(args: argparse.Namespace) -> int:
    """Render and save the grid."""
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the PNG file to write")
    size_hw = (args.size, args.size)
    rows = []
    for row in range(args.objects):
        shape, index = TOY_SHAPES[row % len(TOY_SHAPES)], row // len(TOY_SHAPES)
        obj = sequence_object(shape, index, args.seed, args.style)
        rng = np.random.default_rng([args.seed, row])
        K = sample_intrinsics(rng, size_hw)
        w2c = hand_held_orbit(obj, args.views, K, size_hw, rng)
        rows += [Image.fromarray(render_object(obj, K, w, size_hw)[0]) for w in w2c]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, columns=args.views).save(args.out)
    print(f"{args.objects} objects x {args.views} views of the {args.style} world: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse and run a command; input errors exit 2 with one line."""
    parser = argparse.ArgumentParser(prog="python -m viewdiff.toy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_pretrain_command(commands)
    add_ship_command(commands)
    add_picture_command(commands)
    add_renders_command(commands)
    args = parser.parse_args(argv)
    try:
        with released_locks():  # the --out folder pretrain locked (viewdiff.run_lock)
            return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
