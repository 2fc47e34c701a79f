"""The projection layer's voxel grid: where its voxels are, and lifting feature maps into it.

The grid lives in the normalised scene (object box [-1, 1]^3, ``viewdiff.cameras.conventions``).
Grid coordinates g are in [-1, 1]^3 with voxel centres at (i + 0.5) / G * 2 - 1, the convention of
``grid_sample(align_corners=False)``. A grid tensor is (..., C, G, G, G) ordered (z, y, x), so that
``grid_sample``'s (x, y, z) sample coordinates index it directly.

Without background modelling the grid is the object box (world = g). With it (the reference's
``vol_rend_model_background``) the grid holds the whole unbounded scene: world points are
contracted with MERF's piecewise-projective contraction (Reiser et al. 2023, Eq. 6) into
[-2, 2]^3, whose inner half [-1, 1]^3 is the object box unchanged, and scaled by 1/2 into grid
coordinates.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers, project

# With background modelling the object box is this fraction of the grid (reference: 0.5).
FOREGROUND_FRACTION = 0.5


def voxel_centres(size: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """Grid coordinates (G^3, 3) of the voxel centres, (x, y, z) per row, z slowest."""
    axis = (torch.arange(size, dtype=dtype, device=device) + 0.5) / size * 2.0 - 1.0
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1).reshape(-1, 3)


def contract(points: Tensor) -> Tensor:
    """MERF contraction of world points (..., 3) into grid coordinates in [-1, 1]^3."""
    span = 1.0 / FOREGROUND_FRACTION  # the contracted scene is [-span, span]^3
    norm = points.abs().amax(dim=-1, keepdim=True)  # L-infinity norm
    safe_norm = norm.clamp_min(1.0)  # the outer branch is only used where norm > 1
    # Outside the box: the largest coordinate goes to span - (span - 1) / |x_j|, the others to
    # x_i / |x_j| (MERF Eq. 6 with span = 2); inside the box nothing changes.
    outer = torch.where(
        points.abs() >= norm,
        (span - (span - 1.0) / safe_norm) * torch.sign(points),
        points / safe_norm,
    )
    return torch.where(norm <= 1.0, points, outer) * FOREGROUND_FRACTION


def uncontract(grid_points: Tensor) -> Tensor:
    """World points (..., 3) of grid coordinates (..., 3), the inverse of ``contract``."""
    span = 1.0 / FOREGROUND_FRACTION
    contracted = grid_points / FOREGROUND_FRACTION
    largest = contracted.abs().amax(dim=-1, keepdim=True)
    # |x_j| = (span - 1) / (span - |c_j|) for the largest coordinate; the others scale with it.
    norm = (span - 1.0) / (span - largest.clamp(1.0, span - 1e-6))
    outer = torch.where(
        contracted.abs() >= largest, torch.sign(contracted) * norm, contracted * norm
    )
    return torch.where(largest <= 1.0, contracted, outer)


def grid_world_points(
    size: int, background: bool, dtype: torch.dtype, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """World points (G^3, 3) of the voxel centres and which voxels may hold features (G^3,).

    With background modelling, voxels with two or more contracted coordinates beyond the object
    box are outside the image of the contraction (MERF): no point maps there, so they stay empty.
    """
    centres = voxel_centres(size, dtype, device)
    if not background:
        return centres, torch.ones(centres.shape[0], dtype=torch.bool, device=device)
    beyond_box = (centres.abs() / FOREGROUND_FRACTION > 1.0).sum(dim=-1)
    return uncontract(centres), beyond_box <= 1


@functools.lru_cache(maxsize=16)
def usable_voxels(size: int, background: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """World points (P_u, 3) of the voxels that may hold features and their indices (P_u,).

    Without background modelling that is every voxel; with it half of a 32^3 grid is outside the
    image of the contraction. Cached per grid: the projection layer asks at every call.
    """
    points, usable = grid_world_points(size, background, torch.float32, "cpu")
    index = usable.nonzero()[:, 0]
    return points[index].to(device), index.to(device)


def unproject(
    features: Tensor, K: Tensor, w2c: Tensor, points: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lift feature maps of every view onto 3D points (ViewDiff Sec. 3.3, "unprojection").

    features (B, N, C, h, w), K (B, N, 3, 3) in pixels of the feature map, w2c (B, N, 4, 4) and
    points (P, 3) in world. Returns, channels first as the aggregator takes them, per view and
    point: the bilinearly sampled features (C, B, N, P), whether the point projects in front of
    the camera into the image (1, B, N, P), its depth (1, B, N, P) and the unit viewing
    direction camera -> point (3, B, N, P). Features of invalid points are zero.
    """
    batch, views, channels, height, width = features.shape
    uv, depth = project(points, K, w2c)  # (B, N, P, 2), (B, N, P)
    inside = (
        (depth > 1e-6)
        & (uv[..., 0] >= -0.5)
        & (uv[..., 0] <= width - 0.5)
        & (uv[..., 1] >= -0.5)
        & (uv[..., 1] <= height - 0.5)
    )
    # Pixel centres at integer coordinates: normalised x = (u + 0.5) / W * 2 - 1 with
    # align_corners=False. Invalid points are sent far outside, where zero padding reads zeros
    # (and passes no gradient back), so their features need no masking.
    size = uv.new_tensor([width, height])
    normalised = torch.where(inside[..., None], (uv + 0.5) / size * 2.0 - 1.0, uv.new_tensor(-2.0))
    sampled = F.grid_sample(
        features.reshape(batch * views, channels, height, width),
        normalised.reshape(batch * views, 1, -1, 2).to(features.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B*N, C, 1, P)
    # Contiguous channels first: elementwise ops on a permuted view would keep its layout.
    sampled = sampled.reshape(batch, views, channels, -1).permute(2, 0, 1, 3).contiguous()
    valid = inside[None].to(features.dtype)
    centres = camera_centers(w2c).permute(2, 0, 1)[..., None]  # (3, B, N, 1)
    directions = F.normalize(points.T[:, None, None] - centres, dim=0)
    return sampled, valid, depth[None], directions


def sample_grid(grid: Tensor, grid_points: Tensor) -> Tensor:
    """Trilinear features (B, M, C) of grids (B, C, G, G, G) at grid coordinates (B, M, 3).

    Points outside [-1, 1]^3 read zeros (the reference's mask_out_of_bounds_samples).
    """
    batch, channels = grid.shape[:2]
    sampled = F.grid_sample(
        grid,
        grid_points.reshape(batch, 1, 1, -1, 3).to(grid.dtype),
        mode="bilinear",  # trilinear on a 5-D input
        padding_mode="zeros",
        align_corners=False,
    )  # (B, C, 1, 1, M)
    inside = (grid_points.abs() <= 1.0).all(dim=-1, keepdim=True)
    return sampled.reshape(batch, channels, -1).transpose(1, 2) * inside.to(grid.dtype)
