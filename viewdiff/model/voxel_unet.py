"""A small timestep-conditioned 3D UNet that refines the aggregated voxel grid.

ViewDiff (Sec. 3.3) processes the fused grid with a 3D CNN before rendering it; the reference
(``num_3d_layers=5``) uses a 3D UNet with one ResNet block per level, channels [C', 2C'] and its
own sinusoidal timestep embedding. Same here: conv in, two levels down, a middle block, two levels
up with skip connections, conv out; G must be even (one 2x downsampling). The convolutions are
``viewdiff.model.conv3d.Conv3d`` (``nn.Conv3d``, fast on CPU too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from viewdiff.model.conv3d import Conv3d


def group_count(channels: int) -> int:
    """GroupNorm groups for a channel count: up to 32, always a divisor."""
    return math.gcd(32, channels)


class ResnetBlock3D(nn.Module):
    """GroupNorm-SiLU-Conv3d twice, the time embedding added in between, with a skip."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(in_channels), in_channels)
        self.conv1 = Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(group_count(out_channels), out_channels)
        self.conv2 = Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut = (
            Conv3d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x (B, C_in, G, G, G), temb (B, T) -> (B, C_out, G, G, G)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class VoxelUNet(nn.Module):
    """(B, C', G, G, G) grid and per-object timesteps (B,) -> refined grid (B, C', G, G, G)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        wide = 2 * channels
        temb_dim = 4 * channels
        self.time_proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels, temb_dim)
        self.conv_in = Conv3d(channels, channels, kernel_size=3, padding=1)
        self.down0 = ResnetBlock3D(channels, channels, temb_dim)
        self.downsample = Conv3d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.down1 = ResnetBlock3D(channels, wide, temb_dim)
        self.mid = ResnetBlock3D(wide, wide, temb_dim)
        self.up1 = ResnetBlock3D(2 * wide, wide, temb_dim)
        self.upsample = Conv3d(wide, wide, kernel_size=3, padding=1)
        self.up0 = ResnetBlock3D(wide + channels, channels, temb_dim)
        self.norm_out = nn.GroupNorm(group_count(channels), channels)
        self.conv_out = Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, grid: Tensor, timesteps: Tensor) -> Tensor:
        """Refine grids (B, C', G, G, G) at diffusion timesteps (B,)."""
        if grid.shape[-1] % 2:
            raise ValueError(f"the 3D UNet needs an even grid size, got {grid.shape[-1]}")
        temb = self.time_embedding(self.time_proj(timesteps).to(grid.dtype))
        skip0 = self.down0(self.conv_in(grid), temb)  # (B, C', G, G, G)
        skip1 = self.down1(self.downsample(skip0), temb)  # (B, 2C', G/2, G/2, G/2)
        h = self.mid(skip1, temb)
        h = self.up1(torch.cat([h, skip1], dim=1), temb)
        h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up0(torch.cat([h, skip0], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))
