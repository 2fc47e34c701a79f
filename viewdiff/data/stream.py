"""Stream batches of N posed views of one object from webdataset shards (``viewdiff.data.shards``).

Training runs for a number of steps, not epochs: shards are drawn at random, with replacement,
forever (``resampled=True``; that is the shard shuffle, and no rank or worker can run out of
shards, however few there are). A finite mode (``resampled=False``) reads every shard once per
pass, in an order shuffled with the seed, split between ranks and then workers (evaluation,
tests); there a rank or worker may get no shard at all.

Seeding. Every random choice (which shard next, the shuffle buffer, which N views, which
caption) comes from a generator seeded by (seed, rank, DataLoader worker, stage), computed inside
the worker when its iteration starts. Two ranks or two workers therefore draw different streams,
and the same (seed, rank, num_workers) gives the same batches again. webdataset's own
``ResampledShards`` seeds from the pid and the clock unless ``deterministic=True``, and then
from its ``worker_seed`` callable, which we give the explicit rank (not the environment).

Skipped samples. A corrupt shard, a truncated JPEG or a sample missing a JSON key is skipped:
the first one per worker logs a warning, all are counted, and every batch carries ``skipped``
(the cumulative count of the worker that made it) and ``worker`` (that worker's id). The
training loop keeps the latest count per worker and sums them (``SkippedTally``), then sums over
ranks (e.g. ``accelerator.reduce(..., "sum")``) when it logs.

Use the loader as it is: do not pass it to ``accelerator.prepare`` (that would re-shard or
dispatch it); move the batch's tensors to the device yourself.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor

from viewdiff.cameras import (
    camera_centers,
    first_camera_problem,
    intensity_stats,
    pose_features,
    resize_intrinsics,
)
from viewdiff.config import DataConfig
from viewdiff.data.shards import read_manifest

logger = logging.getLogger(__name__)

MAX_OTHER_CATEGORY = 10_000  # samples of unwanted categories in a row before giving up
SAMPLE_KEYS = ("category", "sequence", "captions", "image_size", "similarity", "frames")
FRAME_KEYS = ("frame_number", "K", "w2c")


class SampleError(ValueError):
    """A sample that cannot be used; the message names the shard and the sample key."""


# Seeds and worker identity.


def worker_id() -> int:
    """This DataLoader worker's id (0 in the main process)."""
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id


def stream_seed(seed: int, rank: int, stage: str) -> int:
    """A 63-bit seed for one stage of one worker of one rank (stable across processes)."""
    text = f"{seed}/{rank}/{worker_id()}/{stage}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


class SkipCounter:
    """Counts what this process skipped for errors; warns once; stops a stream that only fails."""

    def __init__(self, max_consecutive: int = 200) -> None:
        self.count = 0
        self.consecutive = 0
        self.max_consecutive = max_consecutive

    def handle(self, error: Exception) -> bool:
        """webdataset handler: count the error and go on (True)."""
        self.count += 1
        self.consecutive += 1
        if self.count == 1:
            logger.warning(
                "skipping a corrupt sample or shard (further ones are counted silently, "
                "see the batches' 'skipped'): %s",
                error,
            )
        if self.consecutive > self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} samples or shards in a row failed; the last: {error}"
            ) from error
        return True

    def succeeded(self) -> None:
        """A good sample went through."""
        self.consecutive = 0


class SkippedTally:
    """Skipped samples of all of a loader's workers, from the counts its batches carry."""

    def __init__(self) -> None:
        self.latest: dict[int, int] = {}

    def update(self, batch: dict) -> int:
        """Record a batch's count; returns the total over workers so far."""
        self.latest[int(batch["worker"])] = int(batch["skipped"])
        return self.total

    @property
    def total(self) -> int:
        """Sum over workers of their latest cumulative counts."""
        return sum(self.latest.values())


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
        self.seed, self.rank, self.counter = seed, rank, counter

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        rng = random.Random(stream_seed(self.seed, self.rank, "views"))
        passed = 0  # samples of other categories in a row
        for sample in samples:
            try:
                meta = read_sample_meta(sample)
                wanted = not self.categories or meta["category"] in self.categories
                item = self.draw(sample, meta, rng) if wanted else None
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
        else:
            chosen = rng.sample(range(len(frames)), self.n_views)
        captions = meta["captions"]
        return {
            "key": sample["__key__"],
            "category": meta["category"],
            "sequence": meta["sequence"],
            "prompt": rng.choice(captions) if captions else f"a {meta['category']}",
            "jpg": [sample[f"{i:03d}.jpg"] for i in chosen],
            "png": [sample[f"{i:03d}.mask.png"] for i in chosen],
            # the stored views' intrinsics, at the size they are decoded to
            "K": resize_intrinsics(K[chosen], (stored, stored), (self.image_size,) * 2),
            "stored_size": stored,
            "w2c": w2c[chosen],
            "frame_numbers": torch.tensor([frames[i]["frame_number"] for i in chosen]),
            "similarity": torch.tensor(meta["similarity"], dtype=torch.float64),
            "where": where,
        }


# Decoding and what the model needs.


# How views stored larger than data.image_size are resized: as prepare_co3d.py resized them.
RESAMPLING = {"RGB": Image.Resampling.BICUBIC, "L": Image.Resampling.BILINEAR}


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
        size, stored, where = self.image_size, item["stored_size"], item["where"]
        images = np.stack([decode_image(data, "RGB", size, where, stored) for data in item["jpg"]])
        masks = np.stack([decode_image(data, "L", size, where, stored) for data in item["png"]])
        images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        masks = torch.from_numpy(masks)[:, None]  # (N, 1, H, W) uint8
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


TENSOR_KEYS = (
    "images", "masks", "K", "w2c", "pose_features", "intensity_stats", "similarity",
    "frame_numbers",
)  # fmt: skip


def stack(tensors: Sequence[Tensor]) -> Tensor:
    """torch.stack, into shared memory in a DataLoader worker (sent without another copy)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(list(tensors))
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype).share_memory_()
    return torch.stack(list(tensors), out=out)


def collate_views(samples: Sequence[dict]) -> dict:
    """Stack decoded samples into a batch: tensors (B, N, ...), lists of B (images as bytes)."""
    batch = {key: stack([sample[key] for sample in samples]) for key in TENSOR_KEYS}
    for key in ("prompt", "key", "category", "sequence"):
        batch[key] = [sample[key] for sample in samples]
    return batch


def tag_skipped(batches: Iterable[dict], counter: SkipCounter) -> Iterator[dict]:
    """Stage: stamp each batch with this worker's id and its cumulative skipped count."""
    for batch in batches:
        yield {**batch, "skipped": counter.count, "worker": worker_id()}


# Shards and the pipeline.


def split_by_rank(shards: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """Every world_size-th shard from ``rank``: split_by_node with an explicit rank."""
    return islice(shards, rank, None, world_size)


def shuffle_samples(items: Iterable[dict], bufsize: int, seed: int, rank: int) -> Iterator[dict]:
    """webdataset's buffer shuffle, with this worker's own seeded generator."""
    rng = random.Random(stream_seed(seed, rank, "shuffle"))
    return wds.shuffle(bufsize, initial=bufsize, rng=rng)(iter(items))


def shard_urls(shards: str, image_size: int, categories: Sequence[str] = ()) -> list[str]:
    """Shard URLs of ``data.shards``: a folder's manifest, or any webdataset URL / brace pattern."""
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
    urls = shard_urls(data.shards, data.image_size, data.categories)
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
        # parse the JSON, pick N views (random or spread) and a caption, drop the other views
        DrawViews(data, seed, rank, counter),
        # mix samples from several shards
        partial(shuffle_samples, bufsize=data.shuffle_buffer, seed=seed, rank=rank),
        # decode JPEG/PNG, compute intensity stats and pose features
        DecodeViews(data.image_size, counter),
        # B samples -> one batch dict; a last short batch only in finite mode
        wds.batched(batch_size, collation_fn=collate_views, partial=not resampled),
        # stamp the batch with the worker's skipped count
        partial(tag_skipped, counter=counter),
    )


def to_float_views(
    images: Tensor, masks: Tensor, pin_memory: bool = False
) -> tuple[Tensor, Tensor]:
    """Byte images (..., 3, H, W) -> [-1, 1] and byte masks (..., 1, H, W) -> [0, 1], float32,
    written once (into page-locked memory when ``pin_memory``, for asynchronous copies)."""
    image_floats = torch.empty(images.shape, dtype=torch.float32, pin_memory=pin_memory)
    mask_floats = torch.empty(masks.shape, dtype=torch.float32, pin_memory=pin_memory)
    torch.div(images, 127.5, out=image_floats).sub_(1.0)
    torch.div(masks, 255.0, out=mask_floats)
    return image_floats, mask_floats


class ViewBatches:
    """Iterable over a DataLoader's batches, with images and masks turned into floats.

    Workers send images and masks as bytes, a quarter of float32's, stacked straight into shared
    memory (``stack``); the floats are written here once. The batch is the one DESIGN.md
    specifies: images (B, N, 3, H, W) in [-1, 1], masks (B, N, 1, H, W) in [0, 1].
    """

    def __init__(self, loader: torch.utils.data.DataLoader, pin_memory: bool) -> None:
        self.loader, self.pin_memory = loader, pin_memory

    def __iter__(self) -> Iterator[dict]:
        """The batches, endless when the loader's pipeline is resampled."""
        for batch in self.loader:
            batch["images"], batch["masks"] = to_float_views(
                batch["images"], batch["masks"], self.pin_memory
            )
            yield batch


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
