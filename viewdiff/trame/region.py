"""The edit region of a scene lifted from 2D evidence: per-view maps -> a per-Gaussian selection.

TrAME and GaussianEditor trace the edited object's Gaussians from 2D masks (SAM there); here the
evidence is the prior's own cross-attention to the changed words (``AttentionRecord``), each
view's map normalised to [0, 1]. Every Gaussian's centre is projected into every view it falls
in; a Gaussian is selected when the mean map value at its projections reaches ``threshold``
times the highest such mean (voting over views; occlusion is not modelled: a hidden Gaussian
votes with what hides it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from viewdiff.inference.trajectory import Trajectory


def project_points(points: Tensor, cameras: Trajectory) -> tuple[Tensor, Tensor]:
    """Pixel coordinates (V, G, 2) of points (G, 3) in every view, and whether each lands in
    front of the camera and inside the image (V, G)."""
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], 1)  # (G, 4)
    camera = torch.einsum("vij,gj->vgi", cameras.w2c.to(points), homogeneous)[..., :3]
    pixels = torch.einsum("vij,vgj->vgi", cameras.K.to(points), camera)
    depth = pixels[..., 2:].clamp_min(1e-6)
    uv = pixels[..., :2] / depth
    height, width = cameras.image_size_hw
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    return uv, inside & (camera[..., 2] > 1e-3)


def normalise_maps(maps: Tensor) -> Tensor:
    """Maps (V, H, W) scaled to [0, 1] per view (min to 0, max to 1)."""
    low = maps.flatten(1).amin(1)[:, None, None]
    high = maps.flatten(1).amax(1)[:, None, None]
    return (maps - low) / (high - low).clamp_min(1e-12)


def lift_region(
    maps: Tensor, points: Tensor, cameras: Trajectory, threshold: float = 0.5
) -> Tensor:
    """Gaussians (G,) bool whose centres' mean map value over the views they fall in reaches
    ``threshold`` times the best Gaussian's; maps (V, H, W) in [0, 1] at the cameras' size."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"the region threshold must be in (0, 1), got {threshold}")
    if maps.shape != (len(cameras), *cameras.image_size_hw):
        raise ValueError(
            f"maps {tuple(maps.shape)} do not match {len(cameras)} views of {cameras.image_size_hw}"
        )
    uv, inside = project_points(points.detach().float(), cameras)
    height, width = cameras.image_size_hw
    col = uv[..., 0].floor().long().clamp(0, width - 1)
    row = uv[..., 1].floor().long().clamp(0, height - 1)
    views = torch.arange(len(cameras))[:, None].expand_as(col)
    values = maps.to(points.device)[views, row, col] * inside  # (V, G)
    seen = inside.sum(0)
    score = values.sum(0) / seen.clamp_min(1)
    return (score >= threshold * score.max()) & (seen > 0)
