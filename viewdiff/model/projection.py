"""The projection layer: lift every view's features into a 3D grid and render them back.

ViewDiff Sec. 3.3 ("projection layer", the reference's ``UnprojReprojLayer``,
model/projection/layer.py). For the N views of each object:

1. normalise the C feature channels (``model.projection_merge: replace``: the reference's
   ``norm_cf``, a LayerNorm over channels; ``residual``: a GroupNorm) and compress them to C'
   (``model.projection_in``: ``multiple``, the reference's conv3x3 C->C + ReLU, conv3x3 C->C' +
   ReLU, conv1x1 C'->C', layer.py:97-102; ``single``, one conv1x1 C->C');
2. unproject every view's feature map into a G^3 voxel grid over the normalised scene
   (``voxel_grid``), keeping each voxel's per-view feature, visibility, depth and direction;
3. aggregate the views IBRNet-style into one grid (``aggregate``), conditioned on each view's
   time embedding;
4. refine the grid with a timestep-conditioned 3D UNet (``voxel_unet``), at the object's largest
   timestep (the reference takes the last view's, assuming clean condition views come first; the
   largest does not depend on the views' order);
5. volume-render the grid into every view at the feature map's resolution (``volume_render``;
   ``ray_directions``: the rays its direction encoder sees, the reference's or unit vectors):
   C' features over a background of ones, and the opacity m;
6. optionally normalise each view's rendered features over its pixels
   (``model.normalise_rendered``, not the reference's), then map them back to C channels
   (``model.projection_out``): ``multiple``, the reference's foreground and background stacks
   conv1x1 C'->C' + ReLU, C'->C + ReLU, C->C blended m fg + (1 - m) bg (layer.py:130-145,
   :365-373); ``single``, the same blend of two conv1x1 C'->C; ``zero``, [features, m] -> C'
   -> SiLU -> C with the last conv zero, so that a layer whose output is added (``residual``)
   starts at exactly nothing.

What the UNet does with the output is its merge (``multiview_unet``): ``replace`` makes it the
transformer block's features, ``residual`` adds it to the transformer's output. The geometry
(unprojection, ray sampling, compositing) runs in float32 whatever the model's dtype; the learned
parts run in their parameters' dtype. Views can be left out of the grid (``unprojected``), as the
reference leaves out the last, novel view during training.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from viewdiff.cameras.conventions import resize_intrinsics
from viewdiff.model.aggregate import IBRNetAggregator
from viewdiff.model.volume_render import (
    DISPARITY_AT_INFINITY,
    OPACITY_INIT_BIAS,
    RayDirections,
    VolumeRenderer,
)
from viewdiff.model.voxel_grid import unproject, usable_voxels
from viewdiff.model.voxel_unet import group_count, make_voxel_unet

ProjectionMerge = Literal["replace", "residual"]
ProjectionIn = Literal["multiple", "single"]
ProjectionOut = Literal["multiple", "single", "zero"]


def conv_relu(channels_in: int, channels_out: int, kernel_size: int) -> nn.Sequential:
    """A same-size convolution followed by a ReLU (the reference's ``ConvBlock`` without norm)."""
    conv = nn.Conv2d(channels_in, channels_out, kernel_size, padding=kernel_size // 2)
    return nn.Sequential(conv, nn.ReLU())


def make_projection_in(mode: str, channels: int, grid_channels: int) -> nn.Module:
    """Features C -> C' before unprojection: ``multiple`` or ``single`` (see the module)."""
    if mode == "single":
        return nn.Conv2d(channels, grid_channels, kernel_size=1)
    if mode == "multiple":
        return nn.Sequential(
            conv_relu(channels, channels, 3),
            conv_relu(channels, grid_channels, 3),
            nn.Conv2d(grid_channels, grid_channels, kernel_size=1),
        )
    raise ValueError(f"model.projection_in: unknown {mode!r}; one of multiple, single")


def make_projection_out(mode: str, grid_channels: int, channels: int) -> nn.Module:
    """One rendered-features C' -> C stack of ``multiple`` or ``single`` (see the module)."""
    if mode == "single":
        return nn.Conv2d(grid_channels, channels, kernel_size=1)
    if mode == "multiple":
        return nn.Sequential(
            conv_relu(grid_channels, grid_channels, 1),
            conv_relu(grid_channels, channels, 1),
            nn.Conv2d(channels, channels, kernel_size=1),
        )
    raise ValueError(f"model.projection_out: unknown {mode!r}; one of multiple, single, zero")


def aggregate_views(
    aggregator: IBRNetAggregator,
    features: Tensor,
    K: Tensor,
    w2c: Tensor,
    temb: Tensor,
    unprojected: Tensor | None,
    grid_size: int,
    background: bool,
) -> Tensor:
    """Unproject N views' feature maps and aggregate them into grids (B, C', G, G, G).

    features (B, N, C', h, w) float32, K (B, N, 3, 3) in pixels of the feature map, w2c
    (B, N, 4, 4), temb (B, N, T), unprojected (B, N) bool or None (all views). Only the voxels
    that may hold features are computed (with background modelling half the grid is outside the
    contraction's image); the others hold the aggregate of no view, as when they are computed.
    The learned part runs in temb's dtype.
    """
    batch, _, channels = features.shape[:3]
    dtype = temb.dtype
    points, index = usable_voxels(grid_size, background, features.device)
    sampled, valid, depth, directions = unproject(features, K, w2c, points)
    if unprojected is not None:
        valid = valid * unprojected.to(valid.dtype)[..., None]
        sampled = sampled * valid
    aggregated = aggregator(
        sampled.to(dtype), valid.to(dtype), depth.to(dtype), directions.to(dtype), temb
    )  # (C', B, P_u)
    voxels = grid_size**3
    grid = aggregator.empty_voxel().to(dtype)[:, None, None].expand(channels, batch, voxels)
    grid = grid.index_copy(2, index, aggregated) if index.shape[0] < voxels else aggregated
    return grid.transpose(0, 1).reshape(batch, channels, grid_size, grid_size, grid_size)


class ProjectionLayer(nn.Module):
    """Unproject -> aggregate -> 3D UNet -> volume render, for C-channel feature maps.

    The defaults build the layer of exports saved before ``model.projection_merge`` (a residual
    starting at zero); ``MultiViewUNet`` builds it from the model config (the paper's: replace,
    multiple, multiple).
    """

    def __init__(
        self,
        channels: int,
        grid_channels: int,
        grid_size: int,
        num_samples: int,
        background: bool,
        temb_dim: int,
        checkpointing: bool = False,
        disparity_at_infinity: float = DISPARITY_AT_INFINITY,
        density_noise: float = 0.0,
        ray_directions: RayDirections = "unnormalised",
        voxel_unet: str = "reference",
        merge: ProjectionMerge = "residual",
        projection_in: ProjectionIn = "single",
        projection_out: ProjectionOut = "zero",
        opacity_init_bias: float = OPACITY_INIT_BIAS,
        normalise_rendered: bool = False,
    ) -> None:
        super().__init__()
        if merge not in ("replace", "residual"):
            raise ValueError(f"model.projection_merge: unknown {merge!r}; one of replace, residual")
        if grid_size < 2 or grid_size % 2:
            raise ValueError(f"model.voxel_grid_size must be even and >= 2, got {grid_size}")
        if num_samples < 2:
            raise ValueError(f"model.render_samples must be at least 2, got {num_samples}")
        if grid_channels < 1:
            raise ValueError(f"model.projection_channels must be positive, got {grid_channels}")
        if density_noise < 0:
            raise ValueError(f"model.density_noise must be >= 0, got {density_noise}")
        self.density_noise = density_noise
        self.grid_size = grid_size
        self.background = background
        self.checkpointing = checkpointing
        self.merge = merge
        if merge == "replace":
            self.norm: nn.Module = nn.LayerNorm(channels)  # the reference's norm_cf
        else:
            self.norm = nn.GroupNorm(group_count(channels), channels)
        self.compress = make_projection_in(projection_in, channels, grid_channels)
        self.aggregator = IBRNetAggregator(grid_channels, temb_dim)
        self.voxel_unet = make_voxel_unet(voxel_unet, grid_channels)
        self.renderer = VolumeRenderer(
            grid_channels,
            num_samples,
            background,
            disparity_at_infinity,
            ray_directions,
            opacity_init_bias,
        )
        self.projection_out = projection_out
        self.normalise_rendered = normalise_rendered
        if projection_out == "zero":
            self.expand = nn.Sequential(
                nn.Conv2d(grid_channels + 1, grid_channels, kernel_size=1),
                nn.SiLU(),
                nn.Conv2d(grid_channels, channels, kernel_size=1),
            )
            # Zero-initialised output (as ControlNet's zero convolutions): no contribution.
            for parameter in self.expand[-1].parameters():  # its weight and bias
                nn.init.zeros_(parameter)
        else:  # PyTorch's default initialisation, as the reference's
            self.expand_foreground = make_projection_out(projection_out, grid_channels, channels)
            self.expand_background = make_projection_out(projection_out, grid_channels, channels)

    def forward(
        self,
        features: Tensor,
        K: Tensor,
        w2c: Tensor,
        image_size_hw: tuple[int, int],
        temb: Tensor,
        timesteps: Tensor,
        n_views: int,
        unprojected: Tensor | None = None,
        noise_generator: torch.Generator | None = None,
        density_noise: Tensor | None = None,
    ) -> Tensor:
        """Output (B*N, C, h, w) for features (B*N, C, h, w) of N posed views per object.

        K (B*N, 3, 3) in pixels of images of size ``image_size_hw``, w2c (B*N, 4, 4) in the
        normalised scene, temb (B*N, T) the UNet's time embedding, timesteps (B*N,),
        ``unprojected`` (B*N,) bool: which views are lifted into the grid (default all), and
        ``noise_generator`` the source of the density noise in training mode (default torch's),
        or ``density_noise`` that noise drawn already (``draw_density_noise``).
        """
        rows, _, height, width = features.shape
        if rows % n_views:
            raise ValueError(
                f"projection layer: {rows} rows are not whole objects of {n_views} views"
            )
        compressed = self.compress(self.normalise(features))  # (B*N, C', h, w)
        K_features = resize_intrinsics(K.float(), image_size_hw, (height, width))
        noise = density_noise
        if noise is None:
            noise = self.draw_density_noise(
                rows // n_views, n_views * height * width, noise_generator
            )
        inputs = (compressed, K_features, w2c.float(), temb, timesteps, unprojected, noise)
        if self.checkpointing and torch.is_grad_enabled():
            rendered = torch.utils.checkpoint.checkpoint(
                self._lift_and_render, *inputs, n_views, use_reentrant=False
            )
        else:
            rendered = self._lift_and_render(*inputs, n_views)
        return self.expand_rendered(rendered.to(features.dtype))  # (B*N, C, h, w)

    def normalise(self, features: Tensor) -> Tensor:
        """The input norm of features (B*N, C, h, w): LayerNorm over channels or GroupNorm."""
        if isinstance(self.norm, nn.LayerNorm):
            return self.norm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(features)

    def expand_rendered(self, rendered: Tensor) -> Tensor:
        """Rendered features and opacity (B*N, C'+1, h, w) -> the layer's output (B*N, C, h, w)."""
        features, opacity = rendered[:, :-1], rendered[:, -1:]
        if self.normalise_rendered:  # per view and channel, over the pixels
            mean = features.mean(dim=(2, 3), keepdim=True)
            spread = features.std(dim=(2, 3), keepdim=True, correction=0)
            features = (features - mean) / (spread + 1e-5)
        if self.projection_out == "zero":
            return self.expand(torch.cat([features, opacity], dim=1))
        foreground = self.expand_foreground(features)
        background = self.expand_background(features)
        return opacity * foreground + (1 - opacity) * background

    def draw_density_noise(
        self, objects: int, rays: int, generator: torch.Generator | None
    ) -> Tensor | None:
        """Density noise (B, R, S) in training mode with model.density_noise > 0, else None.

        Drawn here, outside the checkpointed part, so that recomputing it sees the same noise.
        """
        if not (self.training and self.density_noise > 0):
            return None
        device = self.density_device
        shape = (objects, rays, self.renderer.samples_per_ray)
        if generator is None:
            return torch.randn(shape, device=device) * self.density_noise
        noise = torch.randn(shape, generator=generator, device=generator.device)
        return noise.to(device) * self.density_noise

    @property
    def density_device(self) -> torch.device:
        """Where the renderer's parameters live."""
        return self.renderer.density.weight.device

    def _lift_and_render(
        self,
        compressed: Tensor,
        K: Tensor,
        w2c: Tensor,
        temb: Tensor,
        timesteps: Tensor,
        unprojected: Tensor | None,
        density_noise: Tensor | None,
        n_views: int,
    ) -> Tensor:
        """Compressed features (B*N, C', h, w) -> rendered features + opacity (B*N, C'+1, h, w)."""
        rows, channels, height, width = compressed.shape
        objects = rows // n_views

        def per_object(x: Tensor) -> Tensor:  # (B*N, ...) -> (B, N, ...)
            return x.reshape(objects, n_views, *x.shape[1:])

        K, w2c = per_object(K), per_object(w2c)
        valid_views = None if unprojected is None else per_object(unprojected)
        grid = aggregate_views(
            self.aggregator,
            per_object(compressed).float(),
            K,
            w2c,
            per_object(temb).to(compressed.dtype),
            valid_views,
            self.grid_size,
            self.background,
        )  # (B, C', G, G, G)
        grid = self.voxel_unet(grid, per_object(timesteps).amax(dim=1))
        rendered = self.renderer(
            grid.float(), K, w2c, height, width, density_noise
        )  # (B, N, C'+1, h, w)
        return rendered.reshape(rows, channels + 1, height, width)
