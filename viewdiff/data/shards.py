"""Pack CO3D-layout captures into webdataset shards: one sample per sequence, or per chunk of one.

Packing has three parts beside this driver: ``shard_plan.py`` decides which samples go to which
shard, ``shard_samples.py`` encodes one sample (its layout is described there) and
``shard_manifest.py`` records what every shard holds.

Sequences without a point cloud (no scene normalisation) are skipped and counted, as the
reference marks them invalid. A shard is written under a temporary name and renamed when
complete, and ``manifest.json`` records what every shard holds, so a re-run skips complete shards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import webdataset as wds
from tqdm import tqdm

from viewdiff.data.co3d import Co3dSequence, list_categories, read_category
from viewdiff.data.shard_manifest import MANIFEST, build_manifest, complete_shards, write_json
from viewdiff.data.shard_plan import ShardOptions, ShardTask, assign_shards, plan_samples
from viewdiff.data.shard_samples import encode_sample

_MAX_ERRORS = 20  # error messages kept in the manifest; the counts are always complete


# One shard (runs in a worker process: top-level functions, picklable arguments).


def write_shard(task: ShardTask) -> dict:
    """Write one shard under a temporary name, rename it when complete; its manifest entry."""
    final = task.out_dir / task.name
    partial = task.out_dir / f".{task.name}.partial"
    skips: Counter[str] = Counter()
    errors: list[str] = []
    categories: set[str] = set()
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


def read_sequences(
    co3d_root: Path, categories: Sequence[str] | None, subset: str | None, split: str | None
) -> tuple[list[Co3dSequence], Counter]:
    """Every sequence of the chosen categories (default: all) and the reader's skip counts."""
    categories = list(categories) if categories else list_categories(co3d_root)
    sequences: list[Co3dSequence] = []
    skipped: Counter[str] = Counter()
    for category in tqdm(categories, desc="read annotations", unit="category"):
        found, report = read_category(co3d_root, category, subset=subset, split=split)
        sequences += found
        skipped["frames_missing_files"] += report.frames_missing_files
        skipped["sequences_without_frames"] += report.sequences_without_frames
        skipped["frames_without_viewpoint"] += report.frames_without_viewpoint
    return sequences, skipped


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
            manifest = build_manifest(tasks, entries, skipped, options, complete=False)
            write_json(out_dir / MANIFEST, manifest)
            progress.update()
    progress.close()
    manifest = build_manifest(tasks, entries, skipped, options, complete=True)
    write_json(out_dir / MANIFEST, manifest)
    manifest["rewritten"] = [task.name for task in todo]  # for the caller, not stored
    return manifest
