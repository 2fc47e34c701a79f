"""The timestep-conditioned 3D UNets that refine the aggregated voxel grid (``model.voxel_unet``).

ViewDiff (Sec. 3.3) processes the fused grid with a 3D CNN before rendering it. Two variants, both
of C' channels in and out, conditioned on the diffusion timestep through their own sinusoidal
embedding, with a 2x downsampling (G must be even), convolutions ``viewdiff.model.conv3d.Conv3d``
(``nn.Conv3d``, fast on CPU too):

- ``reference`` (``UNet3D``): the reference's ``UNet3DModel`` as its projection layer builds it
  (``num_3d_layers=5``: two levels of [C', 2C'] channels, one ResNet per down level, two per up
  level, every down output a skip, GroupNorm of min(32, C') groups); its state dict has the
  reference's names.
- ``compact`` (``VoxelUNet``): one ResNet per level up and down, two skips; what the exports saved
  before the key (the shipped toy prior among them) were trained with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    """The compact 3D UNet: (B, C', G, G, G) grid, timesteps (B,) -> refined (B, C', G, G, G)."""

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


# The reference's 3D UNet (model/custom_unet_3d.py:519-683, UNet3DModel) with the arguments its
# projection layer passes (model/projection/layer.py:74-88, num_3d_layers=5, dim_3d_latent C'):
# (5 - 1) // 2 levels, block_out_channels [C', 2C'], layers_per_block 1 (up blocks get one more,
# :665), norm_num_groups min(32, C') for every GroupNorm (eps 1e-5), a positional time embedding
# of C' frequencies (flip_sin_to_cos, shift 0) into 4C' (:590, :611-614). Module names are the
# reference's, so that its state dict loads as is.
LEVELS = 2
LAYERS_PER_BLOCK = 1


class UNet3DResnet(nn.Module):
    """The reference UNet's ResNet block (custom_unet_3d.py ResnetBlock3D as UNet3DModel builds it):
    ``ResnetBlock3D`` with one group count for both norms and a 1x1 ``conv_shortcut`` only where the
    channels change."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            Conv3d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x (B, C_in, G, G, G), temb (B, T) -> (B, C_out, G, G, G)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample3D(nn.Module):
    """Halve the grid: a stride-2 3x3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv3d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, G, G, G) -> (B, C, G/2, G/2, G/2)."""
        return self.conv(x)


class Upsample3D(nn.Module):
    """Double the grid: nearest-neighbour upsampling, then a 3x3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, G, G, G) -> (B, C, 2G, 2G, 2G)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock3D(nn.Module):
    """ResNets, then a downsampling unless it is the last level; every output is a skip."""

    def __init__(
        self, in_channels: int, out_channels: int, temb_dim: int, groups: int, downsample: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            UNet3DResnet(in_channels if i == 0 else out_channels, out_channels, temb_dim, groups)
            for i in range(LAYERS_PER_BLOCK)
        )
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels)] if downsample else [])

    def forward(self, h: Tensor, temb: Tensor) -> tuple[Tensor, list[Tensor]]:
        """h (B, C_in, G, G, G) -> the block's output and its skips, in order."""
        skips = []
        for resnet in self.resnets:
            h = resnet(h, temb)
            skips.append(h)
        for downsampler in self.downsamplers:
            h = downsampler(h)
            skips.append(h)
        return h, skips


class MidBlock3D(nn.Module):
    """One ResNet at the coarsest level."""

    def __init__(self, channels: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([UNet3DResnet(channels, channels, temb_dim, groups)])

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        """(B, C, G, G, G) -> (B, C, G, G, G)."""
        return self.resnets[0](h, temb)


class UpBlock3D(nn.Module):
    """ResNets that each take the last skip left (concatenated to their input), then an
    upsampling unless it is the finest level."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: list[int],
        out_channels: int,
        temb_dim: int,
        groups: int,
        upsample: bool,
    ) -> None:
        super().__init__()
        resnets = []
        for skip in skip_channels:  # in the order they are taken
            resnets.append(UNet3DResnet(in_channels + skip, out_channels, temb_dim, groups))
            in_channels = out_channels
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels)] if upsample else [])

    def forward(self, h: Tensor, skips: list[Tensor], temb: Tensor) -> Tensor:
        """h (B, C_in, G, G, G); takes (pops) one skip per ResNet from the end of ``skips``."""
        for resnet in self.resnets:
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
        for upsampler in self.upsamplers:
            h = upsampler(h)
        return h


class UNet3D(nn.Module):
    """The reference's 3D UNet: (B, C', G, G, G) grid, timesteps (B,) -> refined (B, C', G, G, G).

    conv_in, then per level ResNets whose outputs (and the downsampled grid) are all kept as skips
    (with conv_in's output: 4 skips at 2 levels), a middle ResNet, then per level one ResNet more
    than down, each concatenating the last skip left (7 ResNets in all), GroupNorm-SiLU-conv_out.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = [channels * (level + 1) for level in range(LEVELS)]  # dim_3d_latent * i
        groups = min(32, channels)
        if channels % groups:
            raise ValueError(
                f"the reference 3D UNet's GroupNorms of min(32, C') groups need C' <= 32 or a "
                f"multiple of 32, got C' = {channels} (model.projection_channels)"
            )
        temb_dim = 4 * channels
        self.conv_in = Conv3d(channels, channels, kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels, temb_dim)
        skips = [channels]  # the channels of the skips, in the order the down path keeps them
        self.down_blocks = nn.ModuleList()
        width = channels
        for level, out in enumerate(widths):
            downsample = level < LEVELS - 1
            self.down_blocks.append(DownBlock3D(width, out, temb_dim, groups, downsample))
            skips += [out] * (LAYERS_PER_BLOCK + downsample)
            width = out
        self.mid_block = MidBlock3D(width, temb_dim, groups)
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(LEVELS)):
            taken = [skips.pop() for _ in range(LAYERS_PER_BLOCK + 1)]
            block = UpBlock3D(width, taken, widths[level], temb_dim, groups, upsample=level > 0)
            self.up_blocks.append(block)
            width = widths[level]
        assert not skips, "every skip is taken by one up ResNet"
        self.conv_norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, grid: Tensor, timesteps: Tensor) -> Tensor:
        """Refine grids (B, C', G, G, G) at diffusion timesteps (B,)."""
        factor = 2 ** (LEVELS - 1)
        if grid.shape[-1] % factor:
            raise ValueError(
                f"the 3D UNet needs a grid size divisible by {factor}, got {grid.shape[-1]}"
            )
        temb = self.time_embedding(self.time_proj(timesteps).to(grid.dtype))  # (B, 4C')
        h = self.conv_in(grid)
        skips = [h]
        for down_block in self.down_blocks:
            h, block_skips = down_block(h, temb)
            skips += block_skips
        h = self.mid_block(h, temb)
        for up_block in self.up_blocks:
            h = up_block(h, skips, temb)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


VOXEL_UNETS: dict[str, Callable[[int], nn.Module]] = {"reference": UNet3D, "compact": VoxelUNet}
"""``model.voxel_unet``: the constructors of the variants, of C'."""


def make_voxel_unet(name: str, channels: int) -> nn.Module:
    """The 3D UNet variant ``name`` (``reference`` or ``compact``) for C' channels."""
    if name not in VOXEL_UNETS:
        raise ValueError(f"model.voxel_unet must be one of {sorted(VOXEL_UNETS)}, got {name!r}")
    return VOXEL_UNETS[name](channels)
