"""Boolean masks (V, H, W) grown or shrunk by whole pixels (square neighbourhoods)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dilate(masks: Tensor, pixels: int = 1) -> Tensor:
    """Masks (V, H, W) bool grown by ``pixels`` in every direction."""
    if pixels <= 0:
        return masks
    size = 2 * pixels + 1
    return F.max_pool2d(masks[:, None].float(), size, stride=1, padding=pixels)[:, 0] > 0


def erode(masks: Tensor, pixels: int = 1) -> Tensor:
    """Masks (V, H, W) bool shrunk by ``pixels`` in every direction."""
    return ~dilate(~masks, pixels)
