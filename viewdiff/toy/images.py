"""Every view of a shard folder in memory: the single images that the toy base is pretrained on.

The toy world's shards (``data/prepare_co3d.py`` of toy objects) hold a few thousand 64 px views;
as uint8 they take tens of MB, so pretraining reads them once and draws batches from memory
instead of streaming. Each view keeps its object's caption and index, so that held-out
evaluations can group views by object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch import Tensor
from tqdm import tqdm

from viewdiff.data.shard_manifest import read_manifest
from viewdiff.data.stream import shard_urls
from viewdiff.data.stream_views import decode_image, read_sample_meta


@dataclass(frozen=True)
class ToyImages:
    """Views as uint8 tensors: images (M, 3, H, W), masks (M, 1, H, W); per view its camera
    (K, w2c in the normalised scene), caption, category and object index (into ``objects``,
    the samples' keys)."""

    images: Tensor
    masks: Tensor
    K: Tensor  # (M, 3, 3)
    w2c: Tensor  # (M, 4, 4)
    captions: tuple[str, ...]
    categories: tuple[str, ...]
    object_index: Tensor  # (M,) int64
    objects: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    def views_of(self, index: int) -> Tensor:
        """The rows (V,) of object ``index``'s views, in their order in the shard."""
        return torch.nonzero(self.object_index == index).flatten()

    def floats(self, index: Tensor | slice | None = None) -> Tensor:
        """Images (m, 3, H, W) in [-1, 1] (all, or the rows of ``index``)."""
        rows = self.images if index is None else self.images[index]
        return rows.float().div(127.5).sub(1.0)


def read_shard_images(shards: str | Path, show_progress: bool = True) -> ToyImages:
    """Decode every view of every sample of a shard folder (its manifest lists the shards)."""
    folder = Path(shards)
    image_size = read_manifest(folder)["image_size"]
    urls = shard_urls(str(folder), image_size)
    images, masks, captions, categories, object_index = [], [], [], [], []
    objects: list[str] = []  # sample keys
    cameras = []
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for sample in tqdm(
        dataset, desc=f"read {folder.name}", unit="object", disable=not show_progress
    ):
        meta = read_sample_meta(sample)
        where = f"{sample['__url__']}: sample {sample['__key__']}"
        caption = meta["captions"][0] if meta["captions"] else f"a {meta['category']}"
        for i, frame in enumerate(meta["frames"]):
            cameras.append((frame["K"], frame["w2c"]))
            images.append(decode_image(sample[f"{i:03d}.jpg"], "RGB", image_size, where))
            masks.append(decode_image(sample[f"{i:03d}.mask.png"], "L", image_size, where))
            captions.append(caption)
            categories.append(meta["category"])
            object_index.append(len(objects))
        objects.append(sample["__key__"])
    if not images:
        raise ValueError(f"{folder}: the shards hold no views")
    return ToyImages(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(np.stack(masks))[:, None].contiguous(),
        K=torch.tensor([K for K, _ in cameras], dtype=torch.float32),
        w2c=torch.tensor([w2c for _, w2c in cameras], dtype=torch.float32),
        captions=tuple(captions),
        categories=tuple(categories),
        object_index=torch.tensor(object_index),
        objects=tuple(objects),
    )
