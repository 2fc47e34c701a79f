"""Nearly evenly spread points on the unit sphere (the golden-angle spiral)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def fibonacci_sphere(n: int, device: torch.device | str = "cpu") -> Tensor:
    """``n`` nearly evenly spread unit vectors (n, 3) on the golden-angle spiral."""
    index = torch.arange(n, dtype=torch.float32, device=device) + 0.5
    z = 1.0 - 2.0 * index / n
    azimuth = math.pi * (3.0 - math.sqrt(5.0)) * index
    ring = (1.0 - z**2).sqrt()
    return torch.stack([ring * azimuth.cos(), ring * azimuth.sin(), z], dim=-1)
