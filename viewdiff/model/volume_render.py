"""Volume rendering of a feature voxel grid into every view (ViewDiff Sec. 3.3, "rendering").

Pure PyTorch: sample depths along every pixel's ray, read the grid trilinearly, turn each sample
into a density and a feature with a small MLP (the field), and alpha-composite front to back
(NeRF, Mildenhall et al. 2020, Eq. 3):

    alpha_i = 1 - exp(-sigma_i delta_i),  T_i = prod_{j<i} (1 - alpha_j),  F = sum_i T_i alpha_i f_i

The field follows the reference's renderer (``fastplane``): two ReLU layers shared by a density head
(softplus, bias -5 at initialisation so that the grid starts almost empty) and a feature head that
also sees an encoding of the ray direction (sigmoid). Rays are parametrised by camera depth (unit-z
directions from ``viewdiff.cameras.conventions.pixel_rays``). Without background modelling a ray is
sampled where it crosses the object box; with it, between |C| - 4 and |C| + 4 around the camera
centre C and as many samples again from there to infinity, evenly in inverse depth (the reference's
``num_samples_inf`` with ``disparity_at_inf``), read through the grid's contraction.

What the ray-direction encoder sees (``model.ray_directions``); the marching uses d either way.
``unnormalised``, the reference's: d = R^T K^-1 (u, v, 1)^T, the world-space step of unit camera
depth through pixel (u, v) of the feature map, of length sqrt(1 + ((u - cx)/fx)^2 + ((v - cy)/fy)^2)
(1 / cos of the angle to the optical axis). The reference feeds its ``linear_ray`` exactly these
(model/projection/layer.py:332, ``self.linear_ray(rays)``, the rays of ``get_rays_in_unit_cube``
:236 <- ``get_rays_for_view``, voxel_proj.py:399-413: K^-1 of the pixel grid (u, v, 1), u = 0..W-1,
of util.py:6-20, with the feature map's K, layer.py:228, rotated by R^T, never normalised; the
scene's scaling into the box, voxel_proj.py:458-460, scales only the camera translation).
``normalised``: d / |d|, the unit vectors that models saved before the key were trained with.

A newly built renderer starts as the reference's (loading weights overwrites it; fastplane/
fastplane_module.py): the MLP layers (``hidden``, ``feature_hidden``: its ``mlp_weights[0..2]``)
xavier-uniform with zero biases (:89-92); the density head U(-1/sqrt(C), 1/sqrt(C)), C its fan-in,
with bias -5 (:93-96); the feature head xavier-uniform of the reference's (C, max(C, 16)) matrix,
padded for its kernel (:88, :97-98), bound sqrt(6 / (C + max(C, 16))): plain xavier for C >= 16;
zero bias (:99); the ray encoder xavier-uniform with zero bias (layer.py:155-157).

Density noise (NeRF's ``raw_noise_std``, the reference's ``inject_noise_sigma``): Gaussian noise
of a given std added to the density pre-activation, before the softplus, a regulariser of
training. The caller draws it (``ProjectionLayer``: in training mode, from the step's generator).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from viewdiff.cameras.conventions import pixel_rays
from viewdiff.model.voxel_grid import contract, sample_grid

# A field maps the grid features (B, R, S, C) of S samples on each of R rays, seen along the rays'
# directions (B, R, 3), to densities (B, R, S) and features (B, R, S, C).
Field = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

BACKGROUND_RAY_MARGIN = 4.0  # near/far = |C| -/+ 4 in the normalised scene (reference)
# The last background sample sits at far / d: model.disparity_at_infinity (the reference's
# vol_rend_disparity_at_inf, 0.5 in its training) sets d; this default of the functions is the
# value models saved before that key were trained with.
DISPARITY_AT_INFINITY = 1e-3
OPACITY_INIT_BIAS = -5.0  # softplus(-5) ~ 0.007: an almost transparent grid at the start
# The reference's fastplane kernel pads its feature head's output to at least 16 channels
# (MIN_KERNEL_RENDER_DIM, fastplane_module.py:46), which sets the head's xavier bound.
KERNEL_MIN_FEATURES = 16

RayDirections = Literal["unnormalised", "normalised"]
"""What the ray-direction encoder sees: unit-depth rays (the reference's) or unit vectors."""


def box_ray_bounds(origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Depths (...) where rays (..., 3) enter and leave the box [-1, 1]^3 (near = far: a miss)."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t1, t2 = (-1.0 - origins) / safe, (1.0 - origins) / safe
    near = torch.minimum(t1, t2).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t1, t2).amin(dim=-1)
    far = torch.maximum(far, near)  # a ray that misses gets an empty interval
    return near, far


def sample_depths(
    near: Tensor,
    far: Tensor,
    num_samples: int,
    background: bool,
    disparity_at_infinity: float = DISPARITY_AT_INFINITY,
) -> Tensor:
    """Sample depths (..., S) along rays: S evenly in [near, far] (+ S beyond far, evenly in
    inverse depth down to far / ``disparity_at_infinity``)."""
    steps = torch.linspace(0.0, 1.0, num_samples, dtype=near.dtype, device=near.device)
    depths = near[..., None] + (far - near)[..., None] * steps
    if not background:
        return depths
    # Inverse-depth spacing beyond far: the k-th sample at far / (1 + (d_inf - 1) (k + 1) / S).
    fractions = torch.arange(1, num_samples + 1, dtype=near.dtype, device=near.device) / num_samples
    beyond = far[..., None] / (1.0 + (disparity_at_infinity - 1.0) * fractions)
    return torch.cat([depths, beyond], dim=-1)


def composite(densities: Tensor, features: Tensor, depths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha-composite samples along rays, front to back.

    densities (..., S), features (..., S, C), sorted depths (..., S). The first sample's interval
    is the second's (as the reference). Returns features (..., C), opacity (...) and depth (...).
    """
    deltas = depths.diff(dim=-1)
    deltas = torch.cat([deltas[..., :1], deltas], dim=-1)
    alpha = 1.0 - torch.exp(-densities * deltas)
    # Transmittance before each sample: exclusive cumulative product of (1 - alpha).
    transmittance = torch.cumprod(1.0 - alpha + 1e-10, dim=-1)
    transmittance = torch.cat([torch.ones_like(alpha[..., :1]), transmittance[..., :-1]], dim=-1)
    weights = transmittance * alpha  # (..., S)
    rendered = (weights[..., None] * features).sum(dim=-2)
    return rendered, weights.sum(dim=-1), (weights * depths).sum(dim=-1)


def render_grid(
    grid: Tensor,
    origins: Tensor,
    directions: Tensor,
    num_samples: int,
    background: bool,
    field: Field,
    disparity_at_infinity: float = DISPARITY_AT_INFINITY,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render grids (B, C, G, G, G) along rays (B, R, 3) of the same object.

    Returns features (B, R, C), opacity (B, R) and expected depth (B, R).
    """
    batch, rays = origins.shape[:2]
    if background:
        distance = origins.norm(dim=-1)  # every ray of a camera starts at its centre
        near = (distance - BACKGROUND_RAY_MARGIN).clamp_min(0.0)
        far = distance + BACKGROUND_RAY_MARGIN
    else:
        near, far = box_ray_bounds(origins, directions)
    depths = sample_depths(near, far, num_samples, background, disparity_at_infinity)  # (B,R,S)
    points = origins[..., None, :] + depths[..., None] * directions[..., None, :]  # (B, R, S, 3)
    grid_points = contract(points) if background else points
    features = sample_grid(grid, grid_points.reshape(batch, -1, 3))  # (B, R*S, C)
    features = features.reshape(batch, rays, depths.shape[-1], -1)  # (B, R, S, C)
    density, sample_features = field(features, directions)
    return composite(density, sample_features, depths)


class VolumeRenderer(nn.Module):
    """The learned field and the rendering of a grid into N views (the renderer's parameters)."""

    def __init__(
        self,
        channels: int,
        num_samples: int,
        background: bool,
        disparity_at_infinity: float = DISPARITY_AT_INFINITY,
        ray_directions: RayDirections = "unnormalised",
        opacity_init_bias: float = OPACITY_INIT_BIAS,
    ) -> None:
        super().__init__()
        if not math.isfinite(opacity_init_bias):
            raise ValueError(f"model.opacity_init_bias must be finite, got {opacity_init_bias}")
        self.opacity_init_bias = opacity_init_bias
        if not 0.0 < disparity_at_infinity < 1.0:
            raise ValueError(
                f"model.disparity_at_infinity must be in (0, 1), got {disparity_at_infinity}"
            )
        if ray_directions not in ("unnormalised", "normalised"):
            raise ValueError(
                f"model.ray_directions must be unnormalised or normalised, got {ray_directions!r}"
            )
        self.num_samples = num_samples
        self.background = background
        self.disparity_at_infinity = disparity_at_infinity
        self.ray_directions = ray_directions
        self.hidden = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU()
        )
        self.density = nn.Linear(channels, 1)
        self.ray_encoder = nn.Linear(3, channels)
        self.feature_hidden = nn.Linear(channels, channels)
        self.feature = nn.Linear(channels, channels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's initialisation (the module docstring cites its lines), the density
        bias at ``opacity_init_bias``."""
        hidden = [layer for layer in self.hidden if isinstance(layer, nn.Linear)]
        for layer in (*hidden, self.feature_hidden, self.ray_encoder):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        channels = self.density.in_features
        bound = 1.0 / math.sqrt(channels)
        nn.init.uniform_(self.density.weight, -bound, bound)
        nn.init.constant_(self.density.bias, self.opacity_init_bias)
        bound = math.sqrt(6.0 / (channels + max(channels, KERNEL_MIN_FEATURES)))
        nn.init.uniform_(self.feature.weight, -bound, bound)
        nn.init.zeros_(self.feature.bias)

    @property
    def samples_per_ray(self) -> int:
        """S: samples on every ray (twice ``num_samples`` with the background)."""
        return self.num_samples * (2 if self.background else 1)

    def field(
        self, features: Tensor, directions: Tensor, density_noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Densities (B, R, S), features (B, R, S, C) in [0, 1] of samples (B, R, S, C) on rays of
        unit-depth directions (B, R, 3), with ``density_noise`` (B, R, S) added to the density
        pre-activation. The ray encoder sees the directions as given or normalised
        (``ray_directions``)."""
        dtype = self.density.weight.dtype
        hidden = self.hidden(features.to(dtype))
        density = self.density(hidden)[..., 0]
        if density_noise is not None:
            density = density + density_noise.to(dtype)
        density = F.softplus(density)
        # The direction encoding is the same for all samples of a ray: once per ray, broadcast.
        if self.ray_directions == "normalised":
            directions = F.normalize(directions, dim=-1)
        ray = self.ray_encoder(directions.to(dtype))[:, :, None, :]
        feature = torch.sigmoid(self.feature(F.relu(self.feature_hidden(hidden) + ray)))
        return density.to(features.dtype), feature.to(features.dtype)

    def forward(
        self,
        grid: Tensor,
        K: Tensor,
        w2c: Tensor,
        height: int,
        width: int,
        density_noise: Tensor | None = None,
    ) -> Tensor:
        """Render grids (B, C, G, G, G) into views K (B, N, 3, 3), w2c (B, N, 4, 4) of size (h, w),
        with ``density_noise`` (B, N*h*w, S) added to the density pre-activation (None: none).

        Returns (B, N, C + 1, h, w): the rendered features over a background of ones (as the
        reference's bg_color=1) and the opacity.
        """
        batch, views = K.shape[:2]
        field = self.field
        if density_noise is not None:
            expected = (batch, views * height * width, self.samples_per_ray)
            if tuple(density_noise.shape) != expected:
                raise ValueError(
                    f"density_noise has shape {tuple(density_noise.shape)}, expected {expected}"
                )
            field = functools.partial(self.field, density_noise=density_noise.float())
        # Rays, sample depths and compositing in float32 even under autocast: in bf16 the
        # contracted background depths round to infinity and the backward pass turns to NaN.
        with torch.autocast(grid.device.type, enabled=False):
            K, w2c = K.float(), w2c.float()
            origins, directions = pixel_rays(K, w2c, height, width, normalize=False)  # (B,N,h,w,3)
            features, opacity, _ = render_grid(
                grid.float(),
                origins.reshape(batch, -1, 3),
                directions.reshape(batch, -1, 3),
                self.num_samples,
                self.background,
                field,
                self.disparity_at_infinity,
            )
            features = features + (1.0 - opacity[..., None])  # background colour 1
            out = torch.cat([features, opacity[..., None]], dim=-1)  # (B, N*h*w, C + 1)
        out = out.to(grid.dtype)
        return out.reshape(batch, views, height, width, -1).permute(0, 1, 4, 2, 3)
