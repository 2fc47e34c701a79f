"""``python -m viewdiff.tiny OUT_DIR [--size tiny|mid] [--seed 0]``: an offline, seeded Stable
Diffusion 2.1-shaped pipeline folder (``viewdiff.tiny``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewdiff.commands.options import add_seed_argument
from viewdiff.output_folders import check_output_folder
from viewdiff.tiny.pipelines import SIZES, build_tiny_pipeline, count_params


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build a pipeline folder and print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m viewdiff.tiny",
        description="Write an offline, seeded Stable Diffusion 2.1-shaped pipeline folder.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the pipeline to")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    add_seed_argument(parser)
    args = parser.parse_args(argv)
    try:
        check_output_folder(args.out_dir, "out_dir")
    except ValueError as error:
        parser.error(str(error))
    out = build_tiny_pipeline(args.out_dir, size=args.size, seed=args.seed)
    counts = {name: count_params(out / name) for name in ("unet", "vae", "text_encoder")}
    summary = ", ".join(f"{name} {n / 1e6:.2f}M" for name, n in counts.items())
    print(f"{args.size} SD pipeline (seed {args.seed}): {summary} params -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
