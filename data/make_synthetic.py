"""Write synthetic objects in the CO3Dv2 layout (offline stand-in for CO3D in tests and demos).

    python data/make_synthetic.py --out data/synthetic
    python data/make_synthetic.py --out DIR --categories box can ball composite \\
        --sequences 4 --frames 24 --size 160x120 --seed 0
    python data/make_synthetic.py --out DIR --style toy --sequences 60 --size 96x96

Styles: "co3d" (default) textured boxes, cans, balls and composites on a checker floor; "toy" the
toy world's single-hue balls, boxes and cans before plain backdrops, captioned "a red ball".

Each category folder gets frame/sequence annotations, set lists, eval batches, captions.json and
synthetic_objects.json (known 3D key points); each sequence its images, masks, depths,
depth_masks, pointcloud.ply and cameras.json (the exact OpenCV cameras).
"""

from __future__ import annotations

import argparse
import sys

from viewdiff.commands.options import int_in, positive_int
from viewdiff.data.co3d import read_category
from viewdiff.data.co3d_set_lists import list_subsets
from viewdiff.data.synthetic import make_synthetic_dataset
from viewdiff.data.synthetic_objects import STYLES
from viewdiff.output_folders import check_output_folder


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 160x120, got {text!r}") from None
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise argparse.ArgumentTypeError(f"width and height must be in [8, 4096], got {text!r}")
    return width, height


def main(argv: list[str] | None = None) -> int:
    """Write the dataset and print what was written."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="dataset root to write into")
    parser.add_argument("--style", choices=list(STYLES), default="co3d", help="kind of objects")
    parser.add_argument(
        "--categories",
        nargs="+",
        choices=sorted({c for categories in STYLES.values() for c in categories}),
        help="categories of the style (default: all of them)",
    )
    parser.add_argument("--sequences", type=positive_int, default=2, help="sequences per category")
    parser.add_argument(
        "--frames", type=int_in(2, 1000), default=20, help="frames per sequence (2 .. 1000)"
    )
    parser.add_argument("--size", type=parse_size, default=(160, 120), help="image WxH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--points", type=positive_int, default=2000, help="points per pointcloud.ply"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing categories")
    args = parser.parse_args(argv)
    try:
        check_output_folder(args.out)
        root = make_synthetic_dataset(
            args.out, args.categories, args.sequences, args.frames, args.size, args.seed,
            args.points, args.overwrite, args.style,
        )  # fmt: skip
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    width, height = args.size
    for category in dict.fromkeys(args.categories or STYLES[args.style]):
        sequences, _ = read_category(root, category)
        subsets = ", ".join(list_subsets(root, category))
        print(f"{root / category}: {len(sequences)} sequences x {args.frames} frames of "
              f"{width}x{height}; set lists: {subsets}")  # fmt: skip
        for sequence in sequences:
            print(f"  {sequence.name}: {sequence.captions[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
