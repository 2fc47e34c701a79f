"""The per-view condition of the pose-conditioned LoRA (reference: model/util.py, get_T):
[theta, sin(azimuth), cos(azimuth), radius, fx/W, fy/H, cx/W, cy/H, intensity mean, var], of
cameras in the normalised scene (``viewdiff.cameras.normalization``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers

POSE_FEATURE_DIM = 10


def intensity_stats(images: Tensor) -> Tensor:
    """Mean and (unbiased) variance over channels and pixels of images (..., C, H, W): (..., 2)."""
    pixels = images.flatten(-3)
    # Two passes: several times faster on CPU than torch.var_mean's single pass.
    mean = pixels.mean(dim=-1, keepdim=True)
    var = (pixels - mean).square().sum(dim=-1) / (pixels.shape[-1] - 1)
    return torch.stack([mean[..., 0], var], dim=-1)


def pose_features(
    K: Tensor, w2c: Tensor, image_size_hw: tuple[int, int], stats: Tensor | None = None
) -> Tensor:
    """The reference's 10-d per-view condition (..., 10) of cameras in the normalised scene.

    The camera position enters as spherical coordinates around the normalised object (polar
    angle from +z, azimuth as sin/cos, radius); intrinsics as fractions of the image size;
    ``stats`` (..., 2) are ``intensity_stats`` of the views, zeros when unknown (the reference
    zeroes them at test time).
    """
    height, width = image_size_hw
    center = camera_centers(w2c)
    theta = torch.atan2(center[..., :2].norm(dim=-1), center[..., 2])
    azimuth = torch.atan2(center[..., 1], center[..., 0])
    intrinsics = torch.stack(
        [K[..., 0, 0] / width, K[..., 1, 1] / height, K[..., 0, 2] / width, K[..., 1, 2] / height],
        dim=-1,
    )
    position = torch.stack(
        [theta, torch.sin(azimuth), torch.cos(azimuth), center.norm(dim=-1)], dim=-1
    )
    if stats is None:
        stats = center.new_zeros(2)
    batch = torch.broadcast_shapes(position.shape[:-1], intrinsics.shape[:-1], stats.shape[:-1])
    parts = [position, intrinsics, stats.to(center.dtype)]
    return torch.cat([part.expand(*batch, part.shape[-1]) for part in parts], dim=-1)
