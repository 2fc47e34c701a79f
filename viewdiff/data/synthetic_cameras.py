"""The cameras of a synthetic capture: a pinhole K drawn per sequence, and a hand-held orbit
around the object like CO3D's (300-360 degrees around, jittered in azimuth, elevation and
distance, rolled a little), framed so that the whole object is in view in every frame.
"""

from __future__ import annotations

import numpy as np
import torch

from viewdiff.cameras.normalization import normalize_w2c
from viewdiff.cameras.orbits import look_at, spherical_to_cartesian
from viewdiff.data.raycast import SyntheticObject


def sample_intrinsics(rng: np.random.Generator, image_size_hw: tuple[int, int]) -> np.ndarray:
    """A pinhole K (3, 3): 40-60 degree horizontal field of view, fy within 2% of fx, off-centre."""
    height, width = image_size_hw
    fx = (width / 2.0) / np.tan(np.deg2rad(rng.uniform(40.0, 60.0)) / 2.0)
    K = np.eye(3)
    K[0, 0], K[1, 1] = fx, fx * rng.uniform(0.98, 1.02)
    K[0, 2] = width / 2.0 - 0.5 + rng.uniform(-0.03, 0.03) * width
    K[1, 2] = height / 2.0 - 0.5 + rng.uniform(-0.03, 0.03) * height
    return K


def hand_held_orbit(
    obj: SyntheticObject,
    frames: int,
    K: np.ndarray,
    image_size_hw: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """World w2c (F, 4, 4) of a CO3D-like capture: 300-360 degrees around, jittered, rolled."""
    height, width = image_size_hw
    # The widest view cone about the principal point that stays inside the image: the object's
    # bounding sphere, seen at 88% of it, is whole in every frame whatever the roll.
    room = min(K[0, 2] + 0.5, width - 0.5 - K[0, 2]) / K[0, 0]
    room = min(room, min(K[1, 2] + 0.5, height - 0.5 - K[1, 2]) / K[1, 1])
    low, high = obj.bounds()
    radius = np.linalg.norm(high - low) / 2.0  # bounding sphere about the box centre, the origin
    distance = radius / np.sin(0.88 * np.arctan(room)) * rng.uniform(1.0, 1.15)
    step, phase = np.arange(frames) / frames, rng.uniform(0.0, 2 * np.pi, 2)
    sweep = np.deg2rad(rng.uniform(300.0, 360.0))
    azimuth = rng.uniform(0, 2 * np.pi) + sweep * (step + rng.uniform(-0.25, 0.25, frames) / frames)
    elevation = rng.uniform(15.0, 35.0) + 6.0 * np.sin(2 * np.pi * step + phase[0])
    elevation = np.deg2rad(elevation + rng.uniform(-1.5, 1.5, frames))
    wobble = 0.08 * (0.5 + 0.5 * np.sin(4 * np.pi * step + phase[1]))
    distances = distance * (1.0 + wobble + rng.uniform(0.0, 0.02, frames))
    target = torch.from_numpy(rng.uniform(-0.05, 0.05, (frames, 3)) * radius)
    eye = target + spherical_to_cartesian(
        *(torch.from_numpy(a) for a in (azimuth, elevation, distances))
    )
    w2c = look_at(eye, target, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).numpy()
    roll = np.deg2rad(rng.uniform(-6.0, 6.0, frames))
    cos, sin, zero, one = np.cos(roll), np.sin(roll), np.zeros(frames), np.ones(frames)
    rotation = np.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], 1).reshape(-1, 3, 3)
    w2c[:, :3, :] = rotation @ w2c[:, :3, :]  # roll about the optical axis
    world = normalize_w2c(torch.from_numpy(w2c), torch.from_numpy(obj.object_to_world))
    return world.numpy()
