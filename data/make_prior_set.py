"""Generate the prior preservation set: single images of the base pipeline from the training
captions, each with a random camera, as shards that train.py reads (train.prior_shards).

    python data/make_prior_set.py --pretrained-model stabilityai/stable-diffusion-2-1-base \\
        --captions-from data/shards/co3d --out data/shards/co3d_prior --size 256
    python data/make_prior_set.py --pretrained-model viewdiff/assets/toy/sd \\
        --captions-from runs/toy/shards/train --out runs/toy/prior --size 64 \\
        --images-per-caption 8 --steps 20 --guidance-scale 4

The images are generated at the base model's own resolution (SD 2.1 base: 512 px) and resized to
--size, with DPM-Solver++ as the reference. Cameras: radius, elevation and focal ranges of the
reference (see viewdiff/data/prior_set.py). Re-running keeps the shards already complete.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

from viewdiff.commands.options import finite_float, positive_int
from viewdiff.data.prior_set import PriorOptions, training_captions, write_prior_set
from viewdiff.output_folders import check_output_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pretrained-model", required=True, help="base pipeline (folder or hub id)"
    )
    parser.add_argument(
        "--captions-from", required=True, help="training shard folder whose captions to use"
    )
    parser.add_argument("--out", type=Path, required=True, help="prior shard folder to write")
    parser.add_argument("--size", type=positive_int, default=256, help="stored image side, px")
    parser.add_argument("--images-per-caption", type=positive_int, default=2)
    parser.add_argument("--max-captions", type=positive_int, help="use at most this many")
    parser.add_argument("--steps", type=positive_int, default=25, help="denoising steps")
    parser.add_argument("--guidance-scale", type=finite_float, default=7.5)
    parser.add_argument("--samples-per-shard", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="caption i uses seed + i")
    parser.add_argument("--device", default="cpu", help="torch device of the pipeline")
    args = parser.parse_args(argv)
    if args.size % 8:
        parser.error(f"--size must be a multiple of 8 (latents are 1/8), got {args.size}")
    return args


def fail(message: str) -> None:
    """Exit 2 with one line naming the problem."""
    print(f"make_prior_set.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_pipeline(name: str, device: str):
    """The base pipeline with DPM-Solver++ (the reference's sampler), quiet; exit 2 if it does
    not load."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(name, safety_checker=None)
    except (OSError, ValueError) as error:
        fail(f"--pretrained-model {name}: {error}")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def main(argv: list[str] | None = None) -> dict:
    """Write the prior set; print and return its totals (exit 2 on bad input)."""
    args = parse_args(argv)
    try:
        check_output_folder(args.out)
        captions = training_captions(args.captions_from, args.size)
    except (OSError, ValueError) as error:
        fail(f"--captions-from {args.captions_from}: {error}")
    captions = captions[: args.max_captions]
    options = PriorOptions(
        image_size=args.size,
        images_per_caption=args.images_per_caption,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        samples_per_shard=args.samples_per_shard,
    )
    # Loaded only when a shard is missing: a re-run over a complete set needs no model.
    pipe = functools.cache(lambda: load_pipeline(args.pretrained_model, args.device))
    manifest = write_prior_set(pipe, captions, args.out, options)
    summary = {"captions": len(captions), **manifest["totals"], "out": str(args.out)}
    print(json.dumps(summary))
    return manifest


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
