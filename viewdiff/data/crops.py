"""How views are cut from their frames: when the shards are written, or when they are streamed.

Shards hold views of one of two kinds (``ShardOptions.crop``, ``prepare_co3d.py --crop``):

- ``full``: every frame whole, resized so that its short side is the image size (aspect kept).
  The stream's ``data.crop: random_square`` cuts each view a random square of side min(h, w),
  as the reference's ``batch.crop random`` does (below), so the object is small and off-centre.
- ``object``: a square around the object with a margin, cut and resized when the shards are
  written (``shard_samples.object_crop_box``). The stream's ``data.crop: object`` reads them as
  they are. Shards written before ``crop`` existed are all of this kind.

The two must agree: a stream of the other kind is refused (``CropMismatch``), naming the shard
or sample and ``data.crop``. The prior preservation set (whole square images of the base
pipeline, ``prior_set.py``) is read by either: a square of side min(h, w) of a square image is
the whole image.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from viewdiff.data.shard_manifest import read_manifest

Crop = Literal["random_square", "object"]
SHARD_CROP = {"random_square": "full", "object": "object"}
"""The kind of shards each ``data.crop`` reads."""

REWRITE = {
    "full": "python data/prepare_co3d.py --crop full --co3d-root ... --out ...",
    "object": "python data/prepare_co3d.py --crop object --co3d-root ... --out ...",
}
DESCRIBED = {
    "full": "full frames (prepare_co3d.py --crop full)",
    "object": "views cropped around the object (prepare_co3d.py --crop object, or shards "
    "written before --crop existed)",
}


class CropMismatch(ValueError):
    """Shards whose views were cut differently from what ``data.crop`` streams."""


def written_crop(record: Mapping) -> str | None:
    """How the views of a sample (its JSON) or of a shard folder (its manifest) were cut:
    "full" or "object" (also those written before the key); None for the prior preservation
    set, which every ``data.crop`` reads."""
    # Prior samples say "prior": true; prior manifests name their split "prior".
    if record.get("prior") or record.get("split") == "prior":
        return None
    return record.get("crop", "object")


def crop_for(shards: str, default: Crop = "random_square") -> Crop:
    """The ``data.crop`` that streams a shard folder as its manifest says it was written
    (``default`` for URLs and the prior set, whose samples every crop reads)."""
    if not Path(shards).is_dir():
        return default
    written = written_crop(read_manifest(shards))
    crops: tuple[Crop, ...] = ("random_square", "object")
    return next((crop for crop in crops if SHARD_CROP[crop] == written), default)


def check_crop(written: str | None, crop: str, where: str) -> None:
    """Refuse shards of ``written`` views for ``data.crop`` = ``crop``; ``where`` names them."""
    if written is None or SHARD_CROP[crop] == written:
        return
    if written not in DESCRIBED:
        raise CropMismatch(f"{where}: unknown crop {written!r}, expected one of {list(DESCRIBED)}")
    wanted = SHARD_CROP[crop]
    other = next(name for name, kind in SHARD_CROP.items() if kind == written)
    raise CropMismatch(
        f"{where}: the shards hold {DESCRIBED[written]}, but data.crop is "
        f"{crop}, which needs {DESCRIBED[wanted]}; rewrite the shards with `{REWRITE[wanted]}` "
        f"or set data.crop={other}"
    )


def random_square(size_hw: tuple[int, int], rng: random.Random) -> tuple[int, int, int]:
    """A random square (left, top, side) of side min(h, w) inside an (h, w) view.

    The reference's ``batch.crop random`` (co3d_dataset.py:831-846): the crop size is
    ``adjust_crop_size(src_hw, (256, 256))`` = min(h, w) (util.py:113-123), its offset
    ``RandomCrop.get_params`` (co3d_dataset.py:832): top uniform in [0, h - side], then left
    uniform in [0, w - side], drawn afresh for every view of every sample (the loop of
    co3d_dataset.py:777). Here the view is the stored frame, so an offset is whole stored pixels.
    """
    height, width = size_hw
    side = min(height, width)
    top = rng.randint(0, height - side)
    left = rng.randint(0, width - side)
    return left, top, side
