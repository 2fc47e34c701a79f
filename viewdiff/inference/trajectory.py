"""Where generated views are seen from: orbits around the normalised object, or cameras.json.

Generated views live in the normalised scene of training (object box [-1, 1]^3, +z up; see
``viewdiff.cameras.conventions``), seen by OpenCV cameras (K in pixels, w2c world-to-camera). The
reference generates on orbits of radius 4-4.5 at a polar angle of 45-60 degrees, i.e. an elevation
of 30-45 degrees above the object's equator; ``infer.py cameras`` draws any trajectory to check it
by eye before spending GPU time on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from viewdiff.cameras.cameras_json import read_cameras
from viewdiff.cameras.checks import check_cameras
from viewdiff.cameras.conventions import camera_centers, transform_points
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.model.multiview_unet import VAE_SCALE_FACTOR

DEFAULT_FOV_DEG = 48.0  # infer.py cameras' default and training's validation orbit


@dataclass(frozen=True)
class Trajectory:
    """V cameras of images of one size: K (V, 3, 3) in pixels, w2c (V, 4, 4) normalised scene."""

    K: Tensor
    w2c: Tensor
    image_size_hw: tuple[int, int]

    def __len__(self) -> int:
        return self.w2c.shape[0]

    def subset(self, indices: list[int] | Tensor) -> Trajectory:
        """The cameras at ``indices``, in that order."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return Trajectory(self.K[index], self.w2c[index], self.image_size_hw)

    def pose_features(self, stats: Tensor | None = None) -> Tensor:
        """The reference's 10-d per-view condition (V, 10); ``stats`` (V, 2) or zeros."""
        return pose_features(self.K, self.w2c, self.image_size_hw, stats)

    def azimuths_deg(self) -> Tensor:
        """Azimuth (V,) in degrees [0, 360) of every camera centre around +z."""
        centres = camera_centers(self.w2c)
        return torch.rad2deg(torch.atan2(centres[:, 1], centres[:, 0])) % 360.0


def concat_trajectories(first: Trajectory, second: Trajectory) -> Trajectory:
    """The cameras of ``first`` followed by those of ``second`` (same image size)."""
    if first.image_size_hw != second.image_size_hw:
        raise ValueError(
            f"cannot join cameras of {first.image_size_hw} and {second.image_size_hw} images"
        )
    return Trajectory(
        torch.cat([first.K, second.K.to(first.K)]),
        torch.cat([first.w2c, second.w2c.to(first.w2c)]),
        first.image_size_hw,
    )


def orbit_trajectory(
    n_views: int,
    elevation_deg: float,
    radius: float,
    image_size: int,
    fov_deg: float = DEFAULT_FOV_DEG,
    start_azimuth_deg: float = 0.0,
) -> Trajectory:
    """``n_views`` square views evenly spaced on a 360-degree orbit around the object box."""
    if radius <= 1.0:
        raise ValueError(f"orbit radius {radius} would put the cameras inside the object box")
    w2c = orbit(n_views, elevation_deg, radius, start_azimuth_deg=start_azimuth_deg)
    K = intrinsics_from_fov(fov_deg, image_size, image_size).expand(n_views, 3, 3).clone()
    trajectory = Trajectory(K, w2c, (image_size, image_size))
    check_trajectory(trajectory, "orbit")
    return trajectory


def check_trajectory(trajectory: Trajectory, source: str) -> None:
    """Refuse cameras that cannot be generated: image sides not multiples of 8, object behind."""
    height, width = trajectory.image_size_hw
    if height % VAE_SCALE_FACTOR or width % VAE_SCALE_FACTOR:
        raise ValueError(
            f"{source}: images of {height}x{width} px; the VAE needs sides that are multiples "
            f"of {VAE_SCALE_FACTOR}"
        )
    if trajectory.K.shape != (len(trajectory), 3, 3) or trajectory.w2c.shape[1:] != (4, 4):
        raise ValueError(
            f"{source}: K {tuple(trajectory.K.shape)} and w2c {tuple(trajectory.w2c.shape)}; "
            "expected (V, 3, 3) and (V, 4, 4)"
        )
    check_cameras(trajectory.K, trajectory.w2c, source)
    # The model sees the object box from outside: a camera that does not have the box centre in
    # front of it was written in another world frame (not the normalised scene).
    centre = torch.zeros(1, 3, dtype=trajectory.w2c.dtype)
    depth = transform_points(trajectory.w2c, centre.expand(len(trajectory), 1, 3))[:, 0, 2]
    behind = torch.nonzero(depth <= 0).flatten().tolist()
    if behind:
        raise ValueError(
            f"{source}: view {behind[0]} does not look at the object box (its centre is behind "
            "the camera); cameras must be OpenCV w2c in the normalised scene"
        )


def read_trajectory(path: str | Path) -> Trajectory:
    """The cameras of a cameras.json file, checked (``viewdiff.cameras.cameras_json`` layout)."""
    K, w2c, size_hw = read_cameras(path)
    trajectory = Trajectory(K.float(), w2c.float(), size_hw)
    check_trajectory(trajectory, str(path))
    return trajectory


def default_input_camera(
    elevation_deg: float, radius: float, image_size: int, fov_deg: float = DEFAULT_FOV_DEG
) -> Trajectory:
    """The camera assumed for a single input image: on the orbit, at azimuth 0."""
    return orbit_trajectory(1, elevation_deg, radius, image_size, fov_deg, start_azimuth_deg=0.0)
