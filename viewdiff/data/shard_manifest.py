"""The manifest of a shard folder (``manifest.json``): what every shard holds, the totals, what
was skipped and why, and the options used; read back by the stream, and by a re-run to keep the
shards already complete.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from viewdiff.data.shard_plan import ShardOptions, ShardTask
from viewdiff.data.shard_samples import SAMPLE_FORMAT

MANIFEST = "manifest.json"
# What the manifest's "skipped" counts (all present, zeros included, so readers see every kind).
SKIP_REASONS = (
    "sequences_without_frames",  # the reader found no frame with an image file
    "sequences_without_point_cloud",  # no pointcloud.ply: no normalisation (reference: invalid)
    "sequences_too_few_frames",  # fewer than min_frames annotated frames
    "samples_failed",  # the point cloud or the camera plane fit failed (errors say why)
    "samples_too_few_frames",  # fewer than min_frames views left after dropping frames
    "frames_missing_files",  # annotated, image file missing (dropped by the reader)
    "frames_without_viewpoint",  # no camera annotation (dropped by the reader)
    "frames_without_mask",  # no mask file (every stored view carries its mask)
    "frames_empty_mask",  # object crops: the object is not in the mask
    "frames_unreadable",  # image or mask could not be decoded, or sizes disagree
)


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


def build_manifest(
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
        "crop": options.crop,  # how the views were cut (crops.py); absent before: "object"
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
