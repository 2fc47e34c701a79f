"""Aggregating the per-view voxel features of an object into one grid (IBRNet-style).

ViewDiff (Sec. 3.3) fuses the N unprojected feature grids with the aggregator of IBRNet
(Wang et al. 2021, Sec. 4.1): per-view features, offset by an encoding of the viewing direction
and depth (and of the view's timestep), are compared with the mean and variance over the views;
an MLP turns that into per-view visibility weights, and the output is built from the weighted
mean and variance. Every layer acts per voxel (the reference's 1x1x1 convolutions), written here
as linear layers over the channel axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def weighted_mean_var(features: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance over views (dim 1) of features (B, N, ..., C) with weights (B, N, ..., 1).

    The weights are normalised over the views; all-zero weights give zeros.
    """
    weights = weights / (weights.sum(dim=1, keepdim=True) + 1e-8)
    mean = (features * weights).sum(dim=1, keepdim=True)
    var = (weights * (features - mean).square()).sum(dim=1, keepdim=True)
    return mean, var


class IBRNetAggregator(nn.Module):
    """Per-view voxel features (B, N, P, C) -> one feature per voxel (B, P, C)."""

    def __init__(self, channels: int, temb_dim: int) -> None:
        super().__init__()
        # Reference (IBRNet_Aggregator): every hidden layer is followed by an ELU.
        half = max(channels // 2, 1)
        self.ray_depth_encoder = nn.Sequential(
            nn.Linear(4, half), nn.ELU(), nn.Linear(half, channels), nn.ELU()
        )
        self.temb_encoder = nn.Sequential(
            nn.Linear(temb_dim, temb_dim // 2),
            nn.ELU(),
            nn.Linear(temb_dim // 2, channels),
            nn.ELU(),
        )
        self.base_fc = nn.Sequential(
            nn.Linear(3 * channels, 2 * channels),
            nn.ELU(),
            nn.Linear(2 * channels, channels),
            nn.ELU(),
        )
        self.vis_fc = nn.Sequential(
            nn.Linear(channels, channels), nn.ELU(), nn.Linear(channels, channels + 1), nn.ELU()
        )
        self.vis_fc2 = nn.Sequential(
            nn.Linear(channels, channels), nn.ELU(), nn.Linear(channels, 1), nn.Sigmoid()
        )
        self.statistics_out = nn.Sequential(nn.Linear(2 * channels + 1, channels), nn.ELU())

    def empty_voxel(self) -> Tensor:
        """The aggregate (C,) of a voxel no view sees: all statistics zero."""
        statistics = self.statistics_out[0]
        return self.statistics_out(statistics.weight.new_zeros(statistics.in_features))

    def forward(
        self, features: Tensor, valid: Tensor, depth: Tensor, directions: Tensor, temb: Tensor
    ) -> Tensor:
        """Aggregated features (B, P, C) of per-view features (B, N, P, C).

        valid and depth (B, N, P, 1), directions (B, N, P, 3), temb (B, N, T).
        """
        channels = features.shape[-1]
        features = features + self.ray_depth_encoder(torch.cat([directions, depth], dim=-1))
        features = features + self.temb_encoder(temb)[:, :, None, :]
        weight = valid / (valid.sum(dim=1, keepdim=True) + 1e-8)
        mean, var = weighted_mean_var(features, valid)
        # base_fc's first layer sees [mean, var, features] per view; the (mean, var) part is the
        # same for all N views, so it is applied once per voxel and broadcast, not concatenated.
        first = self.base_fc[0]
        global_weight, view_weight = first.weight.split([2 * channels, channels], dim=1)
        x = F.linear(torch.cat([mean, var], dim=-1), global_weight)  # (B, 1, P, 2C)
        x = self.base_fc[1:](x + F.linear(features, view_weight, first.bias))  # (B, N, P, C)
        # Visibility: a residual feature update and a first weight, then a refined weight.
        x_res, visibility = self.vis_fc(x * weight).split([channels, 1], dim=-1)
        visibility = torch.sigmoid(visibility) * valid
        x = x + x_res
        visibility = self.vis_fc2(x * visibility) * valid
        mean, var = weighted_mean_var(x, visibility)
        weight = visibility / (visibility.sum(dim=1, keepdim=True) + 1e-8)
        statistics = torch.cat([mean[:, 0], var[:, 0], weight.mean(dim=1)], dim=-1)
        return self.statistics_out(statistics)  # (B, P, C)
