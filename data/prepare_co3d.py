"""CO3D-layout captures (real CO3Dv2 or data/make_synthetic.py's) -> webdataset shards.

    python data/prepare_co3d.py --co3d-root DIR --out data/shards/co3d --size 256 \\
        [--crop full|object] [--categories teddybear hydrant] [--max-frames 100] [--workers 8] \\
        [--subset fewview_dev]

Each sequence becomes one sample (a long one several, each spread around the whole orbit), in
the normalised scene (object box [-1, 1]^3, +z up). ``--crop full`` (the paper's) stores every
frame whole, its short side --size px, for the stream's random squares (data.crop:
random_square); ``--crop object`` stores --size px squares around the object (data.crop:
object). Re-running skips shards that are already complete. See viewdiff/data/shards.py for the
format and viewdiff/data/crops.py for the crops.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from viewdiff.data.co3d import FRAME_ANNOTATIONS, list_categories
from viewdiff.data.co3d_annotations import Co3dFormatError
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--co3d-root", type=Path, required=True, help="CO3D-layout root folder")
    parser.add_argument("--out", type=Path, required=True, help="shard folder (local disk)")
    parser.add_argument(
        "--size", type=int, default=256, help="side of the views (full frames: short side), px"
    )
    parser.add_argument(
        "--crop", choices=("full", "object"), default="full",
        help="full: whole frames, cut to random squares when streamed (data.crop random_square, "
        "the paper's); object: squares around the object (data.crop object)",
    )  # fmt: skip
    parser.add_argument("--categories", nargs="*", help="categories (default: all in the root)")
    parser.add_argument("--subset", help="CO3D subset list, e.g. fewview_dev (default: all)")
    parser.add_argument("--split", default="train", help="shard name prefix; the subset's split")
    parser.add_argument("--max-frames", type=int, default=100, help="most views per sample")
    parser.add_argument("--min-frames", type=int, default=5, help="fewest views per sample")
    parser.add_argument("--samples-per-shard", type=int, default=64, help="samples per tar")
    parser.add_argument("--crop-margin", type=float, default=0.1, help="object crop margin/side")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of views")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample-to-shard order")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)
    if args.size < 8 or args.size % 8:
        parser.error(f"--size must be a positive multiple of 8 (latents are 1/8), got {args.size}")
    if args.min_frames < 3 or args.max_frames < args.min_frames:
        parser.error("need 3 <= --min-frames <= --max-frames (the camera plane fit needs 3)")
    if args.samples_per_shard < 1 or not 1 <= args.jpeg_quality <= 100:
        parser.error("--samples-per-shard must be >= 1 and --jpeg-quality in [1, 100]")
    return args


def fail(message: str) -> None:
    """Exit 2 with one line naming the problem."""
    print(f"prepare_co3d.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> dict:
    """Write the shards; print and return the manifest's summary (exit 2 on bad input)."""
    args = parse_args(argv)
    try:
        categories = list_categories(args.co3d_root)
    except FileNotFoundError as error:
        fail(str(error))
    if not categories:
        fail(f"--co3d-root {args.co3d_root}: no category folder with a {FRAME_ANNOTATIONS}")
    missing = sorted(set(args.categories or []) - set(categories))
    if missing:
        fail(
            f"--categories: {', '.join(missing)} not in {args.co3d_root} ({', '.join(categories)})"
        )
    options = ShardOptions(
        image_size=args.size,
        crop=args.crop,
        max_frames=args.max_frames,
        min_frames=args.min_frames,
        crop_margin=args.crop_margin,
        jpeg_quality=args.jpeg_quality,
        samples_per_shard=args.samples_per_shard,
        split=args.split,
        seed=args.seed,
    )
    try:
        manifest = write_shards(
            args.co3d_root, args.out, options, args.categories, args.subset, args.workers
        )
    except (Co3dFormatError, FileNotFoundError) as error:
        fail(str(error))
    if manifest["totals"]["samples"] == 0:
        reasons = {reason: count for reason, count in manifest["skipped"].items() if count}
        fail(
            f"--co3d-root {args.co3d_root}: no sequence made a sample (skipped: {reasons}); "
            f"the manifest in {args.out} lists 0 shards"
        )
    summary = {key: manifest[key] for key in ("totals", "skipped", "categories")}
    summary["rewritten"] = len(manifest["rewritten"])
    print(json.dumps(summary))
    return manifest


if __name__ == "__main__":
    main()
