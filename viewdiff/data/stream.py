"""Stream batches of N posed views of one object from webdataset shards (``viewdiff.data.shards``).

Training runs for a number of steps, not epochs: shards are drawn at random, with replacement,
forever (``resampled=True``; that is the shard shuffle, and no rank or worker can run out of
shards, however few there are). A finite mode (``resampled=False``) reads every shard once per
pass, in an order shuffled with the seed, split between ranks and then workers (evaluation,
tests); there a rank or worker may get no shard at all.

Seeding. Every random choice (which shard next, the shuffle buffer, which N views, which
caption, where each view's square is cut from a full frame) comes from a generator seeded by
(seed, rank, DataLoader worker, stage), computed inside the worker when its iteration starts.
Two ranks or two workers therefore draw different streams, and the same (seed, rank,
num_workers) gives the same batches again. webdataset's own ``ResampledShards`` seeds from the
pid and the clock unless ``deterministic=True``, and then from its ``worker_seed`` callable,
which we give the explicit rank (not the environment).

Skipped samples. A corrupt shard, a truncated JPEG or a sample missing a JSON key is skipped:
the first one per worker logs a warning, all are counted, and every batch carries ``skipped``
(the cumulative count of the worker that made it) and ``worker`` (that worker's id). The
training loop keeps the latest count per worker and sums them (``SkippedTally``), then sums over
ranks (e.g. ``accelerator.reduce(..., "sum")``) when it logs.

Use the loader as it is: do not pass it to ``accelerator.prepare`` (that would re-shard or
dispatch it); move the batch's tensors to the device yourself.

The pipeline is a list of stages (``build_pipeline``): the seeds and skip counts of its workers
are in ``stream_workers.py``, the stages that draw and decode a sample's views in
``stream_views.py``, and the batching in ``stream_batches.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path

import torch
import webdataset as wds

from viewdiff.config import DataConfig
from viewdiff.data.crops import check_crop, written_crop
from viewdiff.data.shard_manifest import MANIFEST, read_manifest
from viewdiff.data.stream_batches import ViewBatches, collate_views, tag_skipped
from viewdiff.data.stream_views import DecodeViews, DrawViews
from viewdiff.data.stream_workers import SkipCounter, stream_seed


def split_by_rank(shards: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """Every world_size-th shard from ``rank``: split_by_node with an explicit rank."""
    return islice(shards, rank, None, world_size)


def shuffle_samples(items: Iterable[dict], bufsize: int, seed: int, rank: int) -> Iterator[dict]:
    """webdataset's buffer shuffle, with this worker's own seeded generator."""
    rng = random.Random(stream_seed(seed, rank, "shuffle"))
    return wds.shuffle(bufsize, initial=bufsize, rng=rng)(iter(items))


def shard_urls(
    shards: str, image_size: int, categories: Sequence[str] = (), crop: str | None = None
) -> list[str]:
    """Shard URLs of ``data.shards``: a folder's manifest, or any webdataset URL / brace pattern.
    A folder's views must be of ``image_size`` or larger, and cut as ``data.crop`` = ``crop``
    needs (when given; a URL's samples are checked as they stream)."""
    folder = Path(shards)
    if not folder.is_dir():
        urls = wds.shardlists.expand_urls(shards)
        if not urls:
            raise ValueError(f"data.shards={shards!r} names no shards")
        return urls
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        raise ValueError(f"{folder / 'manifest.json'}: shards incomplete; re-run prepare_co3d.py")
    if manifest["image_size"] < image_size:  # larger views are decoded down (decode_image)
        raise ValueError(
            f"{folder}: shards hold {manifest['image_size']} px views, "
            f"data.image_size is {image_size}; prepare_co3d.py --size {image_size} makes them"
        )
    if crop is not None:
        check_crop(written_crop(manifest), crop, str(folder / MANIFEST))
    missing = sorted(set(categories) - set(manifest["categories"]))
    if missing:
        raise ValueError(f"{folder}: no category {missing} (it has {manifest['categories']})")
    entries = [entry for entry in manifest["shards"] if entry["samples"] > 0]
    if categories:
        entries = [entry for entry in entries if set(entry["categories"]) & set(categories)]
    if not entries:
        raise ValueError(f"{folder}: no shard holds a sample of the requested categories")
    return [str(folder / entry["name"]) for entry in entries]


def build_pipeline(
    data: DataConfig,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    resampled: bool = True,
) -> wds.DataPipeline:
    """The webdataset pipeline of batches of N views (an IterableDataset)."""
    for key, value in [("data.n_views", data.n_views), ("data.shuffle_buffer", data.shuffle_buffer),
                       ("batch_size", batch_size), ("world_size", world_size)]:  # fmt: skip
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    urls = shard_urls(data.shards, data.image_size, data.categories, data.crop)
    counter = SkipCounter()
    if resampled:
        shards = [
            # each rank and worker draws shards at random, with replacement, from its own seed;
            # nothing to split: no rank or worker can run out of shards
            wds.ResampledShards(
                urls, seed=seed, worker_seed=partial(stream_seed, seed, rank, "shards"),
                deterministic=True,
            ),
        ]  # fmt: skip
    else:
        shards = [
            # every shard once per pass, in an order shuffled with the seed (same on all ranks)
            wds.SimpleShardList(urls, seed=seed),
            # a disjoint share of the shards per rank, then per worker of that rank
            partial(split_by_rank, rank=rank, world_size=world_size),
            wds.split_by_worker,
        ]
    return wds.DataPipeline(
        *shards,
        # tar members -> samples grouped by key; unreadable shards are counted and skipped
        wds.tarfile_to_samples(handler=counter.handle),
        # parse the JSON, pick N views (random, spread or mix), a caption and, for full frames,
        # each view's random square; drop the other views
        DrawViews(data, seed, rank, counter),
        # mix samples from several shards
        partial(shuffle_samples, bufsize=data.shuffle_buffer, seed=seed, rank=rank),
        # decode JPEG/PNG (full frames: cut to their squares), intensity stats, pose features
        DecodeViews(data.image_size, counter),
        # B samples -> one batch dict; a last short batch only in finite mode
        wds.batched(batch_size, collation_fn=collate_views, partial=not resampled),
        # stamp the batch with the worker's skipped count
        partial(tag_skipped, counter=counter),
    )


def build_loader(
    data: DataConfig,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    resampled: bool = True,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
) -> ViewBatches:
    """Batches of N posed views (endless when ``resampled``) for one rank, from DataLoader
    workers; page-locked for the GPU when CUDA is available (or as ``pin_memory`` says)."""
    workers = data.num_workers if num_workers is None else num_workers
    pipeline = build_pipeline(data, batch_size, seed, rank, world_size, resampled)
    loader = torch.utils.data.DataLoader(
        pipeline,
        batch_size=None,  # the pipeline batches
        num_workers=workers,
        persistent_workers=workers > 0 and resampled,
    )
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return ViewBatches(loader, pin)
