"""The plan of a shard folder: the packing options, which samples exist (one per sequence, or
per interleaved chunk of a long one) and which shard each goes to, deterministically, so that a
re-run finds the same shards and can keep those already written.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from viewdiff.data.co3d import Co3dFrame, Co3dSequence


@dataclass(frozen=True)
class ShardOptions:
    """How views are cropped, encoded and grouped into shards."""

    image_size: int = 256  # side of the square views (full frames: short side), px; paper: 256
    # "full": whole frames, cropped at stream time (data.crop random_square, the paper's);
    # "object": squares around the object, cut now (data.crop object). See crops.py.
    crop: Literal["full", "object"] = "full"
    max_frames: int = 100  # longer sequences are split into interleaved chunks
    min_frames: int = 5  # fewer views make no sample (the plane fit needs 3; N=5 in the paper)
    crop_margin: float = 0.1  # object crops: added on each side of the mask's box, by its size
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


@dataclass
class ShardTask:
    """One shard for a worker process: its samples and where it goes."""

    name: str
    out_dir: Path
    plans: list[SamplePlan]
    options: ShardOptions
    plan_hash: str  # of its samples, frames and options: a re-run compares it


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
    tasks: list[ShardTask] = []
    for start in range(0, len(plans), options.samples_per_shard):
        group = plans[start : start + options.samples_per_shard]
        name = f"{options.split}-{len(tasks):06d}.tar"
        contents = [(plan.key, [f.frame_number for f in plan.frames]) for plan in group]
        digest = json.dumps({"samples": contents, "options": asdict(options)}, sort_keys=True)
        plan_hash = hashlib.sha1(digest.encode()).hexdigest()[:16]
        tasks.append(ShardTask(name, out_dir, group, options, plan_hash))
    return tasks
