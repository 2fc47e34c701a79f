"""Cameras made rather than read: ``look_at``, spherical coordinates around the origin, evenly
spaced orbits around +z (the normalised scenes' up), and a centred pinhole K from a field of view.

All in the OpenCV convention of ``viewdiff.cameras.conventions``: w2c (4x4, x right, y down, z
forward).
"""

from __future__ import annotations

import torch
from torch import Tensor


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenCV w2c (..., 4, 4) of cameras at ``eye`` looking at ``target`` with ``up`` upwards."""
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    if torch.any(right.norm(dim=-1) < 1e-6 * up.norm(dim=-1)):
        raise ValueError("look_at: the viewing direction is parallel to the up vector")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world
    w2c = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    w2c[..., :3, :3] = rotation
    w2c[..., :3, 3] = -(rotation @ eye[..., None])[..., 0]
    w2c[..., 3, 3] = 1.0
    return w2c


def spherical_to_cartesian(azimuth: Tensor, elevation: Tensor, radius: Tensor) -> Tensor:
    """Points (..., 3) at azimuth (from +x towards +y) and elevation (above z=0), in radians."""
    return torch.stack(
        [
            radius * torch.cos(elevation) * torch.cos(azimuth),
            radius * torch.cos(elevation) * torch.sin(azimuth),
            radius * torch.sin(elevation),
        ],
        dim=-1,
    )


def cartesian_to_spherical(points: Tensor) -> Tensor:
    """Points (..., 3) -> (azimuth, elevation, radius) (..., 3), the inverse of the above."""
    radius = points.norm(dim=-1)
    azimuth = torch.atan2(points[..., 1], points[..., 0])
    elevation = torch.asin((points[..., 2] / radius.clamp_min(1e-12)).clamp(-1.0, 1.0))
    return torch.stack([azimuth, elevation, radius], dim=-1)


def orbit(
    num_views: int,
    elevation_deg: float = 20.0,
    radius: float = 2.0,
    look_at_point: tuple[float, float, float] = (0.0, 0.0, 0.0),
    start_azimuth_deg: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """w2c (num_views, 4, 4) evenly spaced on a 360-degree circle around +z (the world's up)."""
    if num_views < 1:
        raise ValueError(f"orbit needs at least one view, got {num_views}")
    azimuth = torch.deg2rad(
        start_azimuth_deg + torch.arange(num_views, dtype=dtype, device=device) * 360.0 / num_views
    )
    elevation = torch.full_like(azimuth, elevation_deg * torch.pi / 180.0)
    target = torch.tensor(look_at_point, dtype=dtype, device=device)
    eye = target + spherical_to_cartesian(azimuth, elevation, torch.full_like(azimuth, radius))
    up = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device)
    return look_at(eye, target.expand_as(eye), up)


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> Tensor:
    """Pinhole K (3, 3) with the given horizontal field of view and the principal point centred."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    focal = (width / 2.0) / torch.tan(
        torch.deg2rad(torch.tensor(fov_deg / 2.0, dtype=torch.float64))
    )
    K = torch.eye(3, dtype=torch.float64)
    K[0, 0] = K[1, 1] = focal
    K[0, 2], K[1, 2] = width / 2.0 - 0.5, height / 2.0 - 0.5
    return K.float()
