"""What a distilled toy scene shows, measured without fitting anything (``bench/sds_quality.py``).

- the colour of each turntable frame is the toy colour rule's (``viewdiff.toy.classify``);
- ``silhouette_parts``: how many separate pieces each frame's foreground has: one object seen
  from anywhere is one piece, a Janus or scattered scene is several;
- ``constant_colour_psnr``: the PSNR of the best constant-colour scene (every pixel the mean
  colour of the targets), the floor that image-to-3D must beat on views it was not given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from viewdiff.scene.losses import psnr
from viewdiff.toy.classify import MIN_FOREGROUND, foreground


def connected_parts(mask: Tensor, min_fraction: float = MIN_FOREGROUND / 4) -> int:
    """Pieces (8-connected) of a bool mask (H, W) covering at least ``min_fraction`` of it."""
    height, width = mask.shape
    labels = torch.arange(1, height * width + 1, dtype=torch.float32).reshape(height, width)
    labels = torch.where(mask, labels, torch.zeros_like(labels))
    while True:  # every pixel takes the largest label around it until nothing changes
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0]
        grown = torch.where(mask, grown, torch.zeros_like(grown))
        if torch.equal(grown, labels):
            break
        labels = grown
    _, counts = labels[mask].unique(return_counts=True)
    return int((counts >= min_fraction * height * width).sum())


def silhouette_parts(frames: Tensor) -> list[int]:
    """Pieces of the foreground of each frame (V, 3, H, W) in [0, 1]."""
    return [connected_parts(mask) for mask in foreground(frames)]


def constant_colour_psnr(targets: Tensor) -> float:
    """Mean PSNR (dB) over targets (V, 3, H, W) in [0, 1] of their best constant colour."""
    colour = targets.mean(dim=(0, 2, 3), keepdim=True)
    return sum(psnr(colour[0].expand_as(t), t) for t in targets) / len(targets)
