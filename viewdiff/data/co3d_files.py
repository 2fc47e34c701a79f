"""The files beside CO3D's annotations, encoded as CO3D encodes them: depth maps (float16 bits in
16-bit PNGs), foreground masks (8-bit P(fg) * 255), valid-depth masks (1-bit) and point clouds
(``pointcloud.ply``). The readers give tensors, the writers take arrays (the synthetic datasets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viewdiff.ply import read_ply


def read_point_cloud(path: str | Path) -> torch.Tensor:
    """The x, y, z columns of a CO3D pointcloud.ply: (P, 3) float64 world points."""
    vertices = read_ply(path)
    missing = [axis for axis in "xyz" if axis not in vertices]
    if missing:
        raise ValueError(f"{path}: point cloud has no {', '.join(missing)} property")
    return torch.from_numpy(np.stack([vertices[a] for a in "xyz"], axis=-1).astype(np.float64))


def read_depth(path: str | Path, scale: float) -> torch.Tensor:
    """CO3D depth (H, W) float32: the 16-bit PNG's bits read as float16, times scale_adjustment.

    The encoding of pytorch3d implicitron's ``_load_16big_png_depth``; non-finite values
    (and 0) mean no depth.
    """
    with Image.open(path) as image:
        bits = np.array(image, dtype=np.uint16)
    depth = bits.view(np.float16).astype(np.float32) * np.float32(scale)
    depth[~np.isfinite(depth)] = 0.0
    return torch.from_numpy(depth)


def write_depth(path: str | Path, depth: np.ndarray, scale: float) -> None:
    """Write depth (H, W) as CO3D does: ``depth / scale`` as float16 bits in a 16-bit PNG."""
    bits = (np.asarray(depth, dtype=np.float32) / np.float32(scale)).astype(np.float16)
    Image.fromarray(bits.view(np.uint16)).save(path)


def read_mask(path: str | Path) -> torch.Tensor:
    """A CO3D foreground mask (H, W) float32 in [0, 1] (stored as P(fg) * 255)."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("L"), dtype=np.float32) / 255.0)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a foreground probability (H, W) in [0, 1] as an 8-bit PNG of P(fg) * 255."""
    probability = np.clip(np.asarray(mask, dtype=np.float64), 0.0, 1.0)
    Image.fromarray(np.round(probability * 255.0).astype(np.uint8)).save(path)


def write_depth_mask(path: str | Path, valid: np.ndarray) -> None:
    """Write CO3D's valid-depth mask (H, W) as a 1-bit PNG."""
    Image.fromarray(np.asarray(valid, dtype=bool)).save(path)
