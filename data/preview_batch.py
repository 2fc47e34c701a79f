"""One batch of the streaming loader as a picture: rows are objects, columns are views.

    python data/preview_batch.py --shards runs/demo/shards --out runs/demo/batch.png [--n-views 4]

Each view carries its mask's outline (yellow) and the normalised object box [-1, 1]^3 projected
with the view's camera (edges red/green/blue along x/y/z, floor shaded): when crops, cameras and
normalisation agree, the box hugs the object in every view and its floor is under it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw
from torch import Tensor

from viewdiff.cameras.conventions import resize_intrinsics
from viewdiff.commands.options import pixel_size, positive_int, view_count
from viewdiff.config import DataConfig
from viewdiff.data.crops import SHARD_CROP, written_crop
from viewdiff.data.shard_manifest import read_manifest
from viewdiff.data.stream import build_loader
from viewdiff.visualize import draw_box_views, image_grid, to_pil

OUTLINE = torch.tensor([255, 220, 0], dtype=torch.uint8)


def mask_outline(mask: Tensor) -> Tensor:
    """Boolean (H, W) of the foreground's border pixels, from a mask (1, H, W) in [0, 1]."""
    foreground = (mask > 0.5).float()[None]  # (1, 1, H, W)
    eroded = -torch.nn.functional.max_pool2d(-foreground, 3, stride=1, padding=1)
    return (foreground - eroded)[0, 0] > 0


def preview_views(batch: dict, index: int, display: int) -> list[Image.Image]:
    """The views of object ``index`` of a batch, enlarged to ``display`` px, with mask outlines
    and the object box projected by each view's camera."""
    images, masks = batch["images"][index], batch["masks"][index]  # (N, 3, H, W), (N, 1, H, W)
    size_hw, display_hw = tuple(images.shape[-2:]), (display, display)
    K = resize_intrinsics(batch["K"][index].double(), size_hw, display_hw)  # cameras of the zoom
    boxes = draw_box_views(K, batch["w2c"][index], display_hw)
    masks = torch.nn.functional.interpolate(masks, size=display_hw, mode="bilinear")
    views = []
    for image, mask, box in zip(images, masks, boxes, strict=True):
        view = to_pil(image).resize(display_hw, Image.Resampling.BICUBIC)
        pixels = np.array(view)  # (H, W, 3) uint8
        pixels[mask_outline(mask).numpy()] = OUTLINE
        # The box drawing is white where empty: multiplying keeps the photo under it.
        views.append(ImageChops.multiply(Image.fromarray(pixels), box))
    label = f"{batch['category'][index]} {batch['sequence'][index]}"
    ImageDraw.Draw(views[0]).text((4, display - 14), label, fill="white")
    return views


def main(argv: list[str] | None = None) -> Path:
    """Draw one batch into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, help="shard folder or webdataset URL")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--n-views", type=view_count, default=4, help="views per object (columns)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="objects (rows)")
    parser.add_argument("--view-sampling", choices=("random", "spread", "mix"), default="spread")
    parser.add_argument("--image-size", type=pixel_size, help="view size (default: the manifest's)")
    parser.add_argument(
        "--crop", choices=tuple(SHARD_CROP),
        help="data.crop (default: the one the manifest's views were written for)",
    )  # fmt: skip
    parser.add_argument("--display-size", type=pixel_size, default=192, help="drawn size of a view")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give the PNG file to write")
    size, crop = args.image_size, args.crop
    if Path(args.shards).is_dir() and (size is None or crop is None):
        try:
            manifest = read_manifest(args.shards)
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))
        size = size or manifest["image_size"]
        streamed_as = {kind: mode for mode, kind in SHARD_CROP.items()}  # written -> data.crop
        crop = crop or streamed_as.get(written_crop(manifest), "random_square")  # prior: either
    if size is None:
        parser.error(f"--shards {args.shards}: not a shard folder (a URL needs --image-size)")
    data = DataConfig(
        shards=args.shards,
        image_size=size,
        n_views=args.n_views,
        view_sampling=args.view_sampling,
        crop=crop or "random_square",
        num_workers=0,
        shuffle_buffer=args.batch_size,
    )
    batch = next(iter(build_loader(data, args.batch_size, args.seed)))
    display = max(args.display_size, size)
    objects = range(len(batch["prompt"]))
    views = [view for b in objects for view in preview_views(batch, b, display)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(views, columns=args.n_views).save(args.out)
    print(f"wrote {args.out}: {len(batch['prompt'])} objects x {args.n_views} views")
    return args.out


if __name__ == "__main__":
    main()
