"""``infer.py sample``: posed views of objects from text (one batch, or a sliding window for
many views): PNGs, a grid, a turntable GIF/MP4 and cameras.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewdiff.commands.generation import (
    add_generation_arguments,
    add_trajectory_arguments,
    generation_info,
    load_prior,
    sample_settings,
    trajectory_of,
)
from viewdiff.commands.options import positive_int
from viewdiff.inference.autoregressive import generate_views
from viewdiff.inference.outputs import object_folder_name, read_prompts, save_generation
from viewdiff.output_folders import check_output_folder
from viewdiff.prior.load import read_export


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
