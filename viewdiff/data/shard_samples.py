"""One sample of the shards: its views, cut from their frames, resized and encoded, with their
cameras in the sequence's normalised scene.

A sample is a group of tar members sharing one key (webdataset splits names at the first dot):

    <key>.json            metadata, below
    <key>.000.jpg         view 0: RGB, the whole frame or a square around the object
    <key>.000.mask.png    view 0's foreground mask, 8-bit grey, the same size
    ...

The JSON holds ``format``, ``category``, ``sequence``, ``chunk``, ``num_chunks``, ``captions``,
``image_size``, ``crop``, ``similarity`` (4x4, the sequence's world -> normalised scene, for
provenance) and ``frames``: per view its ``frame_number``, ``K`` (3x3, pixels of the stored
view), ``w2c`` (4x4, OpenCV, in the normalised scene: object box [-1, 1]^3, +z up) and
``source_size_hw``. View i of ``frames`` is file ``i:03d``. ``crop`` says how views were cut
(``crops.py``): ``full``, the whole frame resized so that its short side is ``image_size``, its
size ``size_hw`` [h, w] per view; ``object`` (and samples written before the key), an
``image_size`` square around the object, its ``crop_box`` [left, top, side] in source pixels.

Scene normalisation uses all frames of a sequence and its point cloud (as the reference's
recentring does).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

from viewdiff.cameras.conventions import crop_intrinsics, resize_intrinsics
from viewdiff.cameras.normalization import normalize_w2c, scene_normalization
from viewdiff.data.co3d import Co3dFrame, Co3dSequence
from viewdiff.data.co3d_files import read_mask, read_point_cloud
from viewdiff.data.shard_plan import SamplePlan, ShardOptions

SAMPLE_FORMAT = 1


class FrameSkipped(ValueError):
    """A frame left out of its sample; ``reason`` is its key in the manifest's skipped counts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Cropping around the object.


def object_crop_box(mask: np.ndarray, margin: float) -> tuple[int, int, int]:
    """Square (left, top, side) around the mask's foreground box, grown by ``margin`` per side.

    The square is shifted to lie inside the image when it fits, so that no padding is needed;
    otherwise it stays centred on the object and reaches past the border (see ``crop_square``).
    """
    rows, cols = np.nonzero(mask > 0.5)
    if rows.size == 0:
        raise FrameSkipped("frames_empty_mask", "the foreground mask is empty")
    height, width = mask.shape
    x0, x1, y0, y1 = cols.min(), cols.max(), rows.min(), rows.max()
    side = math.ceil(max(x1 - x0 + 1, y1 - y0 + 1) * (1.0 + 2.0 * margin))
    left = round((x0 + x1 + 1 - side) / 2)
    top = round((y0 + y1 + 1 - side) / 2)
    if side <= width:
        left = min(max(left, 0), width - side)
    if side <= height:
        top = min(max(top, 0), height - side)
    return int(left), int(top), int(side)


def crop_square(
    array: np.ndarray, left: int, top: int, side: int, pad_mode: Literal["edge", "constant"]
) -> np.ndarray:
    """``array[top:top+side, left:left+side]``, padded where the square leaves the image.

    Images are padded with ``edge`` (the border pixels repeated: no hard frame for the model to
    learn), masks with ``constant`` zeros (nothing there is the object).
    """
    height, width = array.shape[:2]
    pad_top, pad_left = max(0, -top), max(0, -left)
    pad_bottom, pad_right = max(0, top + side - height), max(0, left + side - width)
    if pad_top or pad_left or pad_bottom or pad_right:
        pads = [(pad_top, pad_bottom), (pad_left, pad_right)] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, pads, mode=pad_mode)
        top, left = top + pad_top, left + pad_left
    return array[top : top + side, left : left + side]


def read_frame(frame: Co3dFrame) -> tuple[np.ndarray, np.ndarray]:
    """A frame's RGB image (H, W, 3) uint8 and foreground mask (H, W) in [0, 1]; errors name
    the file."""
    if frame.mask_path is None:  # every stored view carries its mask
        raise FrameSkipped("frames_without_mask", "no foreground mask")
    with Image.open(frame.image_path) as opened:
        image = np.asarray(opened.convert("RGB"))
    if image.shape[:2] != tuple(frame.image_size_hw):
        raise ValueError(
            f"{frame.image_path}: image is {image.shape[:2]}, annotations say {frame.image_size_hw}"
        )
    mask = read_mask(frame.mask_path).numpy()
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{frame.mask_path}: mask is {mask.shape}, image is {image.shape[:2]}")
    return image, mask


def full_size_hw(size_hw: Sequence[int], short_side: int) -> tuple[int, int]:
    """(h, w) of a frame resized so that its short side is ``short_side``, aspect kept."""
    height, width = size_hw
    scale = short_side / min(height, width)
    return round(height * scale), round(width * scale)


def encode_view(frame: Co3dFrame, w2c: torch.Tensor, options: ShardOptions) -> dict:
    """Cut (``options.crop``), resize and encode one frame: {"jpg", "mask.png", "meta"}."""
    image, mask = read_frame(frame)
    if options.crop == "full":
        height, width = full_size_hw(image.shape[:2], options.image_size)
        K = resize_intrinsics(frame.K, image.shape[:2], (height, width))
        placement = {"size_hw": [height, width]}
    else:
        left, top, side = object_crop_box(mask, options.crop_margin)
        image = crop_square(image, left, top, side, "edge")
        mask = crop_square(mask, left, top, side, "constant")
        height = width = options.image_size
        K = resize_intrinsics(crop_intrinsics(frame.K, left, top), (side, side), (height, width))
        placement = {"crop_box": [left, top, side]}
    view = Image.fromarray(image)
    view_mask = Image.fromarray((mask * 255.0).round().astype(np.uint8))
    jpg, png = io.BytesIO(), io.BytesIO()
    # Resampling filters of PIL widen with the scale factor: the downscale is antialiased.
    view.resize((width, height), Image.Resampling.BICUBIC).save(
        jpg, format="JPEG", quality=options.jpeg_quality
    )
    view_mask.resize((width, height), Image.Resampling.BILINEAR).save(png, format="PNG")
    meta = {
        "frame_number": frame.frame_number,
        "K": K.tolist(),
        "w2c": w2c.tolist(),
        "source_size_hw": list(frame.image_size_hw),
        **placement,
    }
    return {"jpg": jpg.getvalue(), "mask.png": png.getvalue(), "meta": meta}


# One sample.


def sequence_similarity(sequence: Co3dSequence) -> torch.Tensor:
    """World -> normalised scene (4, 4) from all of the sequence's cameras and its point cloud."""
    if sequence.point_cloud_path is None:  # plan_samples leaves such sequences out
        raise ValueError(
            f"{sequence.category}/{sequence.name}: no point cloud to normalise the scene with"
        )
    w2c = torch.stack([frame.w2c for frame in sequence.frames]).double()  # (F, 4, 4)
    points = read_point_cloud(sequence.point_cloud_path).double()  # (P, 3)
    return scene_normalization(w2c, points)


def encode_sample(plan: SamplePlan, options: ShardOptions) -> tuple[dict | None, Counter, list]:
    """The webdataset sample of one plan, or None when too few views survive; (sample, skips,
    error messages). Frames that cannot be read or have an empty mask are dropped and counted."""
    skips: Counter[str] = Counter()
    errors: list[str] = []
    sequence = plan.sequence
    similarity = sequence_similarity(sequence)
    frames = plan.frames
    w2c = normalize_w2c(torch.stack([frame.w2c for frame in frames]).double(), similarity)
    sample: dict[str, str | bytes] = {"__key__": plan.key}
    metas: list[dict] = []
    for frame, frame_w2c in zip(frames, w2c, strict=True):
        try:
            view = encode_view(frame, frame_w2c, options)
        except (OSError, ValueError) as error:  # PIL's decode errors are OSErrors
            skips[getattr(error, "reason", "frames_unreadable")] += 1
            errors.append(
                f"{sequence.category}/{sequence.name} frame {frame.frame_number}: {error}"
            )
            continue
        index = len(metas)
        sample[f"{index:03d}.jpg"], sample[f"{index:03d}.mask.png"] = view["jpg"], view["mask.png"]
        metas.append(view["meta"])
    if len(metas) < options.min_frames:
        skips["samples_too_few_frames"] += 1
        return None, skips, errors
    meta = {
        "format": SAMPLE_FORMAT,
        "category": sequence.category,
        "sequence": sequence.name,
        "chunk": plan.chunk,
        "num_chunks": plan.num_chunks,
        "captions": list(sequence.captions),
        "image_size": options.image_size,
        "crop": options.crop,
        "similarity": similarity.tolist(),
        "frames": metas,
    }
    sample["json"] = json.dumps(meta).encode()
    return sample, skips, errors
