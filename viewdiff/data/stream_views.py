"""Stages of the stream from a raw webdataset sample to N decoded views: check the sample's JSON,
choose N views (at random, spread around the orbit, or the reference's mix), a caption and, for
full-frame shards, a random square of each view (``data.crop``, ``crops.py``), then decode the
chosen JPEGs and masks, cut to their squares, and compute the per-view conditions (intensity
stats, pose features) of the views as fed.

A sample that cannot be used raises ``SampleError`` inside a stage, which counts and skips it
(``SkipCounter``); the stream goes on.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from viewdiff.cameras.checks import first_camera_problem
from viewdiff.cameras.conventions import camera_centers, crop_intrinsics, resize_intrinsics
from viewdiff.cameras.pose_features import intensity_stats, pose_features
from viewdiff.config import DataConfig
from viewdiff.data.crops import CropMismatch, check_crop, random_square, written_crop
from viewdiff.data.stream_workers import SkipCounter, stream_seed

MAX_OTHER_CATEGORY = 10_000  # samples of unwanted categories in a row before giving up
SAMPLE_KEYS = ("category", "sequence", "captions", "image_size", "similarity", "frames")
FRAME_KEYS = ("frame_number", "K", "w2c")


class SampleError(ValueError):
    """A sample that cannot be used; the message names the shard and the sample key."""


# Choosing N views of a sample.


def spread_views(w2c: Tensor, n_views: int, rng: random.Random) -> list[int]:
    """Indices of N views evenly spaced around the orbit, from a random start.

    Frames are ordered by the azimuth of their camera centre around +z in the normalised scene
    and every (F / N)-th is taken, so the views surround the object whatever the capture order.
    """
    centres = camera_centers(w2c)  # (F, 3)
    order = torch.argsort(torch.atan2(centres[:, 1], centres[:, 0])).tolist()
    count, start = len(order), rng.randrange(len(order))
    return [order[(start + (i * count) // n_views) % count] for i in range(n_views)]


MIX_MAX_OFFSET = 4
"""``mix``'s consecutive runs step 0 .. this many stored frames from one view to the next."""


def mixed_views(n_frames: int, n_views: int, rng: random.Random) -> list[int]:
    """The reference's ``other_selection: mix`` (co3d_dataset.py:684-704): a random first view,
    then, by a coin, N - 1 others drawn at random from the remaining frames, or a run that steps
    an offset of 0 .. MIX_MAX_OFFSET frames from one view to the next (wrapping around; offset 0
    repeats the first view, as the reference's does). Frames are the sample's stored frames in
    capture order, so an offset counts stored frames, not the video's."""
    first = rng.randrange(n_frames)
    if rng.random() < 0.5:
        others = rng.sample([i for i in range(n_frames) if i != first], n_views - 1)
    else:
        offset = rng.randint(0, MIX_MAX_OFFSET)
        others = [(first + offset * (i + 1)) % n_frames for i in range(n_views - 1)]
    return [first, *others]


def square_crops(
    frames: list[dict], chosen: list[int], K: Tensor, size: int, rng: random.Random, where: str
) -> tuple[list[tuple[int, int, int]], Tensor]:
    """A random square (left, top, side) of each chosen full-frame view and its intrinsics
    (V, 3, 3) at ``size`` px: the principal point shifted by the square's offset, as the
    reference's convert_camera does (co3d_dataset.py:457-463), then scaled to ``size``."""
    boxes, cropped = [], []
    for i in chosen:
        if "size_hw" not in frames[i]:
            raise SampleError(f"{where}: frames[{i}] of a full-frame sample has no key 'size_hw'")
        left, top, side = random_square(tuple(frames[i]["size_hw"]), rng)
        boxes.append((left, top, side))
        shifted = crop_intrinsics(K[i], left, top)
        cropped.append(resize_intrinsics(shifted, (side, side), (size, size)))
    return boxes, torch.stack(cropped)


def _located(error: Exception, where: str) -> Exception:
    """The error, as a SampleError that names the shard and sample if it does not already."""
    if isinstance(error, SampleError):
        return error
    return SampleError(f"{where}: {type(error).__name__}: {error}")


def read_sample_meta(sample: dict) -> dict:
    """The checked JSON of a raw sample; errors name the shard, key and missing entry."""
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
    if "json" not in sample:
        raise SampleError(f"{where}: no json member")
    try:
        meta = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SampleError(f"{where}: invalid JSON ({error})") from None
    missing = [key for key in SAMPLE_KEYS if key not in meta]
    if missing:
        raise SampleError(f"{where}: JSON has no key {missing[0]!r}")
    for index, frame in enumerate(meta["frames"]):
        missing = [key for key in FRAME_KEYS if key not in frame]
        if missing:
            raise SampleError(f"{where}: frames[{index}] has no key {missing[0]!r}")
        for member in (f"{index:03d}.jpg", f"{index:03d}.mask.png"):
            if member not in sample:
                raise SampleError(f"{where}: view {index} has no {member} member")
    return meta


class DrawViews:
    """Stage: raw samples -> N chosen views' encoded files and cameras (the rest dropped).

    Runs before the shuffle buffer, so that the buffer holds N views per sample, not all.
    """

    def __init__(self, data: DataConfig, seed: int, rank: int, counter: SkipCounter) -> None:
        self.n_views, self.view_sampling = data.n_views, data.view_sampling
        self.image_size, self.categories = data.image_size, set(data.categories)
        self.crop, self.caption_fallback = data.crop, data.caption_fallback
        self.seed, self.rank, self.counter = seed, rank, counter

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        rng = random.Random(stream_seed(self.seed, self.rank, "views"))
        passed = 0  # samples of other categories in a row
        for sample in samples:
            try:
                meta = read_sample_meta(sample)
                wanted = not self.categories or meta["category"] in self.categories
                item = self.draw(sample, meta, rng) if wanted else None
            except CropMismatch:  # the config's, not the sample's fault: skipping would hide it
                raise
            except Exception as error:  # anything a corrupt sample raises
                where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
                self.counter.handle(_located(error, where))
                continue
            passed = 0 if wanted else passed + 1
            if passed > MAX_OTHER_CATEGORY:  # an endless stream would otherwise never yield
                raise ValueError(
                    f"no sample of data.categories={sorted(self.categories)} in "
                    f"{passed} samples in a row; are they in these shards?"
                )
            if item is not None:
                yield item

    def draw(self, sample: dict, meta: dict, rng: random.Random) -> dict:
        """The chosen views of one checked sample."""
        where = f"{sample['__url__']}: sample {sample['__key__']}"
        written = written_crop(meta)
        check_crop(written, self.crop, where)
        frames = meta["frames"]
        if len(frames) < self.n_views:
            raise SampleError(f"{where}: {len(frames)} views, fewer than n_views={self.n_views}")
        stored = meta["image_size"]
        if stored < self.image_size:
            raise SampleError(
                f"{where}: views are {stored} px, smaller than data.image_size={self.image_size}"
            )
        w2c = torch.tensor([frame["w2c"] for frame in frames], dtype=torch.float64)
        K = torch.tensor([frame["K"] for frame in frames], dtype=torch.float64)
        found = first_camera_problem(K, w2c)  # a bad camera would train on garbage: skip it
        if found is not None:
            raise SampleError(f"{where}: view {found[0]}: {found[1]}")
        if self.view_sampling == "spread":
            chosen = spread_views(w2c, self.n_views, rng)
        elif self.view_sampling == "mix":
            chosen = mixed_views(len(frames), self.n_views, rng)
        else:
            chosen = rng.sample(range(len(frames)), self.n_views)
        captions = meta["captions"]
        # The reference: a random caption of the sequence, "" without (co3d_dataset.py:719-728).
        fallback = "" if self.caption_fallback == "empty" else f"a {meta['category']}"
        prompt = rng.choice(captions) if captions else fallback
        boxes: list[tuple[int, int, int] | None]
        if written == "full":  # drawn last: samples of object crops draw what they always did
            squares, K_views = square_crops(frames, chosen, K, self.image_size, rng, where)
            boxes, sizes = list(squares), [tuple(frames[i]["size_hw"]) for i in chosen]
        else:  # the stored squares, at the size they are decoded to
            K_views = resize_intrinsics(K[chosen], (stored, stored), (self.image_size,) * 2)
            boxes, sizes = [None] * len(chosen), [(stored, stored)] * len(chosen)
        return {
            "key": sample["__key__"],
            "category": meta["category"],
            "sequence": meta["sequence"],
            "prompt": prompt,
            "jpg": [sample[f"{i:03d}.jpg"] for i in chosen],
            "png": [sample[f"{i:03d}.mask.png"] for i in chosen],
            "K": K_views,
            "sizes_hw": sizes,  # of the stored views
            "boxes": boxes,  # (left, top, side) of each view's square; None: the stored view
            "w2c": w2c[chosen],
            "frame_numbers": torch.tensor([frames[i]["frame_number"] for i in chosen]),
            "similarity": torch.tensor(meta["similarity"], dtype=torch.float64),
            "where": where,
        }


# Decoding and what the model needs.


# How views stored larger than data.image_size are resized: as prepare_co3d.py resized them.
RESAMPLING = {"RGB": Image.Resampling.BICUBIC, "L": Image.Resampling.BILINEAR}


def decode_view(
    data: bytes, mode: str, size: int, where: str, size_hw: tuple[int, int], box: tuple | None
) -> np.ndarray:
    """A stored view of ``size_hw`` as a fully decoded uint8 array of ``size`` px: a square view
    as it is (``box`` None, ``decode_image``), a full frame cut to the square ``box`` (left, top,
    side) and resized (when side != size). A mask is cut with its image's square, as the
    reference cuts its foreground mask (co3d_dataset.py:835-839)."""
    if box is None:
        return decode_image(data, mode, size, where, size_hw[0])
    left, top, side = box
    with Image.open(io.BytesIO(data)) as image:
        if image.size != (size_hw[1], size_hw[0]):
            expected = f"{size_hw[1]}x{size_hw[0]}"
            raise SampleError(f"{where}: a view is {image.size}, expected {expected}")
        square = image.convert(mode).crop((left, top, left + side, top + side))
    if side == size:
        return np.array(square)
    return np.array(square.resize((size, size), RESAMPLING[mode]))


def decode_image(
    data: bytes, mode: str, size: int, where: str, stored: int | None = None
) -> np.ndarray:
    """An encoded image of ``stored`` px (default ``size``) as a fully decoded uint8 array of
    ``size`` px. A larger JPEG is decoded at reduced size first (PIL's draft mode: the DCT
    scaled by 1/2, 1/4 or 1/8, never below ``size``), then resized."""
    stored = size if stored is None else stored
    with Image.open(io.BytesIO(data)) as image:
        if image.size != (stored, stored):
            raise SampleError(f"{where}: a view is {image.size}, expected {stored}x{stored}")
        if stored == size:
            return np.array(image.convert(mode))  # decodes now: a truncated file raises here
        image.draft(mode, (size, size))  # JPEG only: a no-op for the PNG masks
        return np.array(image.convert(mode).resize((size, size), RESAMPLING[mode]))


class DecodeViews:
    """Stage: chosen views -> byte images and masks, intensity stats and pose features."""

    def __init__(self, image_size: int, counter: SkipCounter) -> None:
        self.image_size, self.counter = image_size, counter

    def __call__(self, items: Iterable[dict]) -> Iterator[dict]:
        for item in items:
            try:
                decoded = self.decode(item)
            except Exception as error:  # anything a corrupt image raises
                self.counter.handle(_located(error, item["where"]))
                continue
            self.counter.succeeded()
            yield decoded

    def decode(self, item: dict) -> dict:
        """Images and masks as bytes (floats come in the main process, ``ViewBatches``) and the
        per-view conditions of one sample."""
        size, where = self.image_size, item["where"]
        views = list(zip(item["sizes_hw"], item["boxes"], strict=True))  # a mask as its image
        rgb = np.stack([decode_view(data, "RGB", size, where, *view)
                        for data, view in zip(item["jpg"], views, strict=True)])  # fmt: skip
        grey = np.stack([decode_view(data, "L", size, where, *view)
                         for data, view in zip(item["png"], views, strict=True)])  # fmt: skip
        images = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        masks = torch.from_numpy(grey)[:, None]  # (N, 1, H, W) uint8
        # Statistics of the [-1, 1] images: x = u / 127.5 - 1 for bytes u.
        stats = intensity_stats(images.float()) / torch.tensor([127.5, 127.5**2])
        stats[:, 0] -= 1.0  # (N, 2)
        features = pose_features(item["K"], item["w2c"], (size, size), stats.double())  # (N, 10)
        return {
            "images": images,
            "masks": masks,
            "K": item["K"].float(),
            "w2c": item["w2c"].float(),
            "pose_features": features.float(),
            "intensity_stats": stats,
            "similarity": item["similarity"].float(),
            "frame_numbers": item["frame_numbers"],
            **{key: item[key] for key in ("prompt", "key", "category", "sequence")},
        }
