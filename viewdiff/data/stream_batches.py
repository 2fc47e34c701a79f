"""Batching of the stream: decoded samples stacked into one batch (in shared memory inside a
DataLoader worker), stamped with the worker's skipped count, and turned into floats in the main
process (``ViewBatches``), where the batch reaches the shape DESIGN.md specifies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from viewdiff.data.stream_workers import SkipCounter, worker_id

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
    batch: dict[str, Tensor | list[Any]] = {
        key: stack([sample[key] for sample in samples]) for key in TENSOR_KEYS
    }
    for key in ("prompt", "key", "category", "sequence"):
        batch[key] = [sample[key] for sample in samples]
    return batch


def tag_skipped(batches: Iterable[dict], counter: SkipCounter) -> Iterator[dict]:
    """Stage: stamp each batch with this worker's id and its cumulative skipped count."""
    for batch in batches:
        yield {**batch, "skipped": counter.count, "worker": worker_id()}


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
