"""Pack CO3D-layout captures into webdataset shards: one sample per sequence, or per chunk of one.

A sample is a group of tar members sharing one key (webdataset splits names at the first dot):

    <key>.json            metadata, below
    <key>.000.jpg         view 0: RGB, image_size x image_size, cropped around the object
    <key>.000.mask.png    view 0's foreground mask, 8-bit grey
    ...

The JSON holds ``format``, ``category``, ``sequence``, ``chunk``, ``num_chunks``, ``captions``,
``image_size``, ``similarity`` (4x4, the sequence's world -> normalised scene, for provenance)
and ``frames``: per view its ``frame_number``, ``K`` (3x3, pixels of the stored view), ``w2c``
(4x4, OpenCV, in the normalised scene: object box [-1, 1]^3, +z up), ``source_size_hw`` and
``crop_box`` ([left, top, side] in source pixels). View i of ``frames`` is file ``i:03d``.

Scene normalisation uses all frames of a sequence and its point cloud (as the reference's
recentring does); sequences without a point cloud are skipped and counted, as the reference
marks them invalid. A shard is written under a temporary name and renamed when complete, and
``manifest.json`` records what every shard holds, so a re-run skips complete shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from viewdiff.cameras import crop_intrinsics, normalize_w2c, resize_intrinsics, scene_normalization
from viewdiff.data.co3d import (
    Co3dFrame,
    Co3dSequence,
    list_categories,
    read_category,
    read_mask,
    read_point_cloud,
)

SAMPLE_FORMAT = 1
MANIFEST = "manifest.json"
_MAX_ERRORS = 20  # error messages kept in the manifest; the counts are always complete
# What the manifest's "skipped" counts (all present, zeros included, so readers see every kind).
SKIP_REASONS = (
    "sequences_without_frames",  # the reader found no frame with an image file
    "sequences_without_point_cloud",  # no pointcloud.ply: no normalisation (reference: invalid)
    "sequences_too_few_frames",  # fewer than min_frames annotated frames
    "samples_failed",  # the point cloud or the camera plane fit failed (errors say why)
    "samples_too_few_frames",  # fewer than min_frames views left after dropping frames
    "frames_missing_files",  # annotated, image file missing (dropped by the reader)
    "frames_without_viewpoint",  # no camera annotation (dropped by the reader)
    "frames_without_mask",  # no mask file: nothing to crop around
    "frames_empty_mask",  # the object is not in the mask
    "frames_unreadable",  # image or mask could not be decoded, or sizes disagree
)


@dataclass(frozen=True)
class ShardOptions:
    """How views are cropped, encoded and grouped into shards."""

    image_size: int = 256  # side of the square views, px (the paper trains at 256)
    max_frames: int = 100  # longer sequences are split into interleaved chunks
    min_frames: int = 5  # fewer views make no sample (the plane fit needs 3; N=5 in the paper)
    crop_margin: float = 0.1  # added on each side of the mask's box, as a fraction of its size
    jpeg_quality: int = 95
    samples_per_shard: int = 64
    split: str = "train"  # shard names: {split}-000000.tar; with a subset, its split is read
    seed: int = 0  # order of samples over shards


@dataclass(frozen=True)
class SamplePlan:
    """One sample to write: chunk ``chunk`` of ``num_chunks`` of a sequence."""

    sequence: Co3dSequence
    chunk: int
    num_chunks: int

    @property
    def key(self) -> str:
        """The webdataset key: no dots (they split extensions) and no slashes."""
        name = f"{self.sequence.category}--{self.sequence.name}--{self.chunk:03d}"
        return name.replace(".", "_").replace("/", "_")

    @property
    def frames(self) -> tuple[Co3dFrame, ...]:
        """Every num_chunks-th frame from ``chunk``: each chunk still goes around the orbit."""
        return self.sequence.frames[self.chunk :: self.num_chunks]


class FrameSkipped(ValueError):
    """A frame left out of its sample; ``reason`` is its key in the manifest's skipped counts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ShardTask:
    """One shard for a worker process: its samples and where it goes."""

    name: str
    out_dir: Path
    plans: list[SamplePlan]
    options: ShardOptions
    plan_hash: str  # of its samples, frames and options: a re-run compares it


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


def crop_square(array: np.ndarray, left: int, top: int, side: int, pad_mode: str) -> np.ndarray:
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


def encode_view(frame: Co3dFrame, w2c: torch.Tensor, options: ShardOptions) -> dict:
    """Crop, resize and encode one frame: {"jpg", "mask.png", "meta"}; errors name the file."""
    if frame.mask_path is None:
        raise FrameSkipped("frames_without_mask", "no foreground mask to crop around")
    with Image.open(frame.image_path) as opened:
        image = np.asarray(opened.convert("RGB"))
    if image.shape[:2] != tuple(frame.image_size_hw):
        raise ValueError(
            f"{frame.image_path}: image is {image.shape[:2]}, annotations say {frame.image_size_hw}"
        )
    mask = read_mask(frame.mask_path).numpy()
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{frame.mask_path}: mask is {mask.shape}, image is {image.shape[:2]}")
    left, top, side = object_crop_box(mask, options.crop_margin)
    size = options.image_size
    view = Image.fromarray(crop_square(image, left, top, side, "edge"))
    view_mask = Image.fromarray(
        (crop_square(mask, left, top, side, "constant") * 255.0).round().astype(np.uint8)
    )
    jpg, png = io.BytesIO(), io.BytesIO()
    # Resampling filters of PIL widen with the scale factor: the downscale is antialiased.
    view.resize((size, size), Image.Resampling.BICUBIC).save(
        jpg, format="JPEG", quality=options.jpeg_quality
    )
    view_mask.resize((size, size), Image.Resampling.BILINEAR).save(png, format="PNG")
    K = resize_intrinsics(crop_intrinsics(frame.K, left, top), (side, side), (size, size))
    meta = {
        "frame_number": frame.frame_number,
        "K": K.tolist(),
        "w2c": w2c.tolist(),
        "source_size_hw": list(frame.image_size_hw),
        "crop_box": [left, top, side],
    }
    return {"jpg": jpg.getvalue(), "mask.png": png.getvalue(), "meta": meta}


# One sample.


def sequence_similarity(sequence: Co3dSequence) -> torch.Tensor:
    """World -> normalised scene (4, 4) from all of the sequence's cameras and its point cloud."""
    w2c = torch.stack([frame.w2c for frame in sequence.frames]).double()  # (F, 4, 4)
    points = read_point_cloud(sequence.point_cloud_path).double()  # (P, 3)
    return scene_normalization(w2c, points)


def encode_sample(plan: SamplePlan, options: ShardOptions) -> tuple[dict | None, Counter, list]:
    """The webdataset sample of one plan, or None when too few views survive; (sample, skips,
    error messages). Frames that cannot be read or have an empty mask are dropped and counted."""
    skips, errors = Counter(), []
    sequence = plan.sequence
    similarity = sequence_similarity(sequence)
    frames = plan.frames
    w2c = normalize_w2c(torch.stack([frame.w2c for frame in frames]).double(), similarity)
    sample, metas = {"__key__": plan.key}, []
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
        "similarity": similarity.tolist(),
        "frames": metas,
    }
    sample["json"] = json.dumps(meta).encode()
    return sample, skips, errors


# One shard (runs in a worker process: top-level functions, picklable arguments).


def write_shard(task: ShardTask) -> dict:
    """Write one shard under a temporary name, rename it when complete; its manifest entry."""
    final = task.out_dir / task.name
    partial = task.out_dir / f".{task.name}.partial"
    skips, errors, categories = Counter(), [], set()
    samples = frames = 0
    # mtime an int: with a float one tarfile writes a PAX header before every member, which cost
    # the loader a sixth of its time to parse
    with open(partial, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0) as sink:
        for plan in task.plans:
            try:
                sample, sample_skips, sample_errors = encode_sample(plan, task.options)
            except (OSError, ValueError, RuntimeError) as error:  # point cloud, plane fit
                sample, sample_skips = None, Counter(samples_failed=1)
                sample_errors = [f"{plan.sequence.category}/{plan.sequence.name}: {error}"]
            skips.update(sample_skips)
            errors.extend(sample_errors)
            if sample is not None:
                sink.write(sample)
                samples += 1
                frames += sum(1 for name in sample if name.endswith(".jpg"))
                categories.add(plan.sequence.category)
    os.replace(partial, final)  # atomic: a shard with its final name is always complete
    return {
        "name": task.name,
        "samples": samples,
        "frames": frames,
        "categories": sorted(categories),
        "plan": task.plan_hash,
        "skipped": dict(sorted(skips.items())),
        "errors": errors[:_MAX_ERRORS],
    }


# Planning: which samples exist and which shard each goes to.


def plan_samples(
    sequences: Sequence[Co3dSequence], options: ShardOptions, skipped: Counter
) -> list[SamplePlan]:
    """Samples of usable sequences (long ones split into chunks); counts what is left out."""
    plans = []
    for sequence in sequences:
        if sequence.point_cloud_path is None or not Path(sequence.point_cloud_path).is_file():
            skipped["sequences_without_point_cloud"] += 1
            continue
        if len(sequence.frames) < options.min_frames:
            skipped["sequences_too_few_frames"] += 1
            continue
        num_chunks = math.ceil(len(sequence.frames) / options.max_frames)
        plans += [SamplePlan(sequence, chunk, num_chunks) for chunk in range(num_chunks)]
    return plans


def assign_shards(plans: list[SamplePlan], options: ShardOptions, out_dir: Path) -> list[ShardTask]:
    """Deterministic shards: plans sorted by key, shuffled with the seed, cut into groups."""
    plans = sorted(plans, key=lambda plan: plan.key)
    # Shuffled so that every shard mixes categories and sequences; seeded so re-runs agree.
    random.Random(options.seed).shuffle(plans)
    tasks = []
    for start in range(0, len(plans), options.samples_per_shard):
        group = plans[start : start + options.samples_per_shard]
        name = f"{options.split}-{len(tasks):06d}.tar"
        contents = [(plan.key, [f.frame_number for f in plan.frames]) for plan in group]
        digest = json.dumps({"samples": contents, "options": asdict(options)}, sort_keys=True)
        plan_hash = hashlib.sha1(digest.encode()).hexdigest()[:16]
        tasks.append(ShardTask(name, out_dir, group, options, plan_hash))
    return tasks


# The whole dataset.


def read_manifest(folder: str | Path) -> dict:
    """The manifest.json of a shard folder; errors name the file."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no shard manifest (write one with data/prepare_co3d.py)"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error}") from None


def write_json(path: Path, values: dict) -> None:
    """Write JSON under a temporary name, then rename: readers never see half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(values, indent=1) + "\n")
    os.replace(partial, path)


def _manifest(
    tasks: list[ShardTask], entries: dict, skipped: Counter, options: ShardOptions, complete: bool
) -> dict:
    """The manifest: per-shard counts, totals, skipped counts and the options used."""
    shards = [entries[task.name] for task in tasks if task.name in entries]
    categories = sorted({category for entry in shards for category in entry["categories"]})
    totals = Counter(skipped)
    for entry in shards:
        totals.update(entry["skipped"])
    return {
        "format": SAMPLE_FORMAT,
        "complete": complete,
        "split": options.split,
        "image_size": options.image_size,
        "categories": categories,  # those with samples
        "totals": {
            "shards": len(shards),
            "samples": sum(entry["samples"] for entry in shards),
            "frames": sum(entry["frames"] for entry in shards),
        },
        "skipped": {reason: totals[reason] for reason in SKIP_REASONS},
        "options": asdict(options),
        "shards": shards,
    }


def read_sequences(
    co3d_root: Path, categories: Sequence[str] | None, subset: str | None, split: str | None
) -> tuple[list[Co3dSequence], Counter]:
    """Every sequence of the chosen categories (default: all) and the reader's skip counts."""
    categories = list(categories) if categories else list_categories(co3d_root)
    sequences, skipped = [], Counter()
    for category in tqdm(categories, desc="read annotations", unit="category"):
        found, report = read_category(co3d_root, category, subset=subset, split=split)
        sequences += found
        skipped["frames_missing_files"] += report.frames_missing_files
        skipped["sequences_without_frames"] += report.sequences_without_frames
        skipped["frames_without_viewpoint"] += report.frames_without_viewpoint
    return sequences, skipped


def complete_shards(tasks: list[ShardTask], out_dir: Path) -> tuple[dict, list[ShardTask]]:
    """Manifest entries of shards already complete (file present, same plan), and the rest."""
    previous = {}
    if (out_dir / MANIFEST).is_file():
        previous = {entry["name"]: entry for entry in read_manifest(out_dir).get("shards", [])}
    entries, todo = {}, []
    for task in tasks:
        entry = previous.get(task.name, {})
        if (out_dir / task.name).is_file() and entry.get("plan") == task.plan_hash:
            entries[task.name] = entry
            (out_dir / f".{task.name}.partial").unlink(missing_ok=True)  # a stale leftover
        else:
            todo.append(task)  # missing, left half-written, or planned differently
    return entries, todo


def _write_pickled_shard(task: bytes) -> dict:
    """``write_shard`` of a task pickled by ``pickle.dumps`` (see ``write_shards``)."""
    return write_shard(pickle.loads(task))


def _single_thread() -> None:
    """Pool initializer: the processes are the parallelism, not torch's threads."""
    torch.set_num_threads(1)


def _worker_pool(workers: int, tasks: int) -> contextlib.AbstractContextManager:
    """A spawn pool of up to ``workers`` processes, or None (in-process) for one worker/task."""
    if workers <= 1 or tasks <= 1:
        return contextlib.nullcontext(None)
    # spawn: workers start clean (no forked torch threads or open files of the parent).
    return multiprocessing.get_context("spawn").Pool(min(workers, tasks), _single_thread)


def write_shards(
    co3d_root: str | Path,
    out_dir: str | Path,
    options: ShardOptions,
    categories: Sequence[str] | None = None,
    subset: str | None = None,
    workers: int = 1,
) -> dict:
    """Write the shards of a CO3D-layout root and their manifest; returns the manifest.

    ``subset`` picks a CO3D subset list (e.g. fewview_dev) whose ``options.split`` frames are
    read. Shards already complete (file present, same plan in the previous manifest) are kept.
    """
    co3d_root, out_dir = Path(co3d_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sequences, skipped = read_sequences(
        co3d_root, categories, subset, options.split if subset else None
    )
    tasks = assign_shards(plan_samples(sequences, options, skipped), options, out_dir)
    entries, todo = complete_shards(tasks, out_dir)
    progress = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="shards", unit="shard")
    with _worker_pool(workers, len(todo)) as pool:
        if pool is None:
            results = map(write_shard, todo)
        else:
            # Plain pickles: through the pool's own pickler every camera tensor of every frame
            # would travel as a shared-memory file descriptor, and a dataset of ~10k frames ran
            # out of them ("Too many open files").
            tasks_bytes = [pickle.dumps(task) for task in todo]
            results = pool.imap_unordered(_write_pickled_shard, tasks_bytes)
        for entry in results:
            entries[entry["name"]] = entry
            for message in entry["errors"][:3]:
                progress.write(f"skipped: {message}")
            # The manifest follows every finished shard, so that a re-run after a crash keeps it.
            manifest = _manifest(tasks, entries, skipped, options, complete=False)
            write_json(out_dir / MANIFEST, manifest)
            progress.update()
    progress.close()
    manifest = _manifest(tasks, entries, skipped, options, complete=True)
    write_json(out_dir / MANIFEST, manifest)
    manifest["rewritten"] = [task.name for task in todo]  # for the caller, not stored
    return manifest
