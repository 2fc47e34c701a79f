"""Scene normalisation (the reference's CO3D recentring): level the cameras' plane, centre the
object box, scale it to a fixed size. The result is a similarity transform of the world, and the
cameras are re-expressed in the normalised scene (``normalize_w2c``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers


def camera_plane_rotation(w2c: Tensor) -> Tensor:
    """Rotation (3, 3) taking world directions to a frame whose +z is the cameras' plane normal.

    The normal is the least-variance axis of the camera centres (V >= 3). Unlike the reference,
    its sign is fixed so that +z points where the cameras' up (-y) points on average, and the
    frame is right-handed, so that "up" means the same in every sequence.
    """
    if w2c.shape[-3] < 3:
        raise ValueError(
            f"levelling the camera plane needs at least 3 cameras, got {w2c.shape[-3]}"
        )
    centers = camera_centers(w2c)
    _, _, axes = torch.linalg.svd(centers - centers.mean(dim=-2, keepdim=True), full_matrices=False)
    major, normal = axes[..., 0, :], axes[..., 2, :]
    camera_up = -w2c[..., 1, :3].mean(dim=-2)  # row 1 of w2c: the camera y (down) axis in world
    normal = torch.where((normal * camera_up).sum(-1, keepdim=True) < 0, -normal, normal)
    return torch.stack([major, torch.linalg.cross(normal, major, dim=-1), normal], dim=-2)


def scene_normalization(w2c: Tensor, object_points: Tensor, box_size: float = 2.0) -> Tensor:
    """Similarity (4, 4) from world to the normalised scene: cameras levelled, object box centred.

    ``object_points`` (P, 3) are the object's points in world (a point cloud, or box corners);
    their axis-aligned box in the levelled frame is centred at the origin and its longest side
    scaled to ``box_size`` (2: the object fits in [-1, 1]^3, the projection layer's grid).
    """
    rotation = camera_plane_rotation(w2c)
    levelled = object_points @ rotation.transpose(-1, -2)
    low, high = levelled.amin(dim=-2), levelled.amax(dim=-2)
    extent = (high - low).amax(dim=-1)
    if torch.any(extent <= 0):
        raise ValueError("scene normalisation needs object points that span a non-empty box")
    scale = box_size / extent
    similarity = torch.zeros(*w2c.shape[:-3], 4, 4, dtype=w2c.dtype, device=w2c.device)
    similarity[..., :3, :3] = scale[..., None, None] * rotation
    similarity[..., :3, 3] = -scale[..., None] * (low + high) / 2.0
    similarity[..., 3, 3] = 1.0
    return similarity


def normalize_w2c(w2c: Tensor, similarity: Tensor) -> Tensor:
    """Cameras w2c (..., V, 4, 4) expressed in the world mapped by ``similarity`` (..., 4, 4)."""
    scale = torch.linalg.det(similarity[..., :3, :3]).abs().pow(1.0 / 3.0)
    # x_cam = w2c S^-1 x' is the camera frame shrunk by 1/scale; scaling it back keeps K valid.
    moved = w2c @ torch.linalg.inv(similarity)[..., None, :, :]
    moved[..., :3, :] = moved[..., :3, :] * scale[..., None, None, None]
    return moved
