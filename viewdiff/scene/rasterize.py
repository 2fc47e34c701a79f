"""The differentiable 3D Gaussian rasteriser in plain PyTorch (CPU and any device).

It follows 3D Gaussian Splatting (Kerbl et al. 2023, Sec. 4 and 6) step by step, so that its
images match the CUDA rasterisers (gsplat, the original) up to float rounding:

1. EWA splatting (Zwicker et al. 2001): the 2D covariance of a Gaussian is J W Sigma W^T J^T
   (3DGS Eq. 5), J the Jacobian of the perspective projection at the Gaussian's mean, plus a
   0.3 px^2 low-pass dilation; Gaussians in front of the near plane are culled.
2. Tiles: each Gaussian is listed in the pixel tiles (8x8 here; 16x16 in CUDA) its footprint
   touches, front to back (a global sort by depth, then a stable sort by tile).
3. Front-to-back alpha compositing per pixel (3DGS Eq. 3): alpha_i = min(0.99, o_i G_i(p)),
   Gaussians with alpha_i < 1/255 skipped, colour = sum_i c_i alpha_i T_i with
   T_i = prod_{j<i} (1 - alpha_j), and a pixel stops before the Gaussian that would bring T
   below 1e-4.

Pixel coordinates follow viewdiff.cameras.conventions (the centre of pixel (i, j) is at (i, j)). The
footprint of a Gaussian is cut where alpha drops below 1/255, not at the 3-sigma box, so the
image does not depend on the tile size. The tiles walk their lists together, a segment of
Gaussians per step, and drop out once all their pixels have stopped: on CPU that early exit is
what makes opaque scenes cheap. Memory is bounded: a step holds at most ``budget``
(tile, pixel, Gaussian) triples, and past ``budget`` stored triples the steps are recomputed in
the backward pass (activation checkpointing) instead of kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

ALPHA_MIN = 1.0 / 255.0  # 3DGS skips Gaussians fainter than one 8-bit step
ALPHA_MAX = 0.99  # 3DGS clamps alpha, which keeps 1 - alpha away from 0
TRANSMITTANCE_MIN = 1e-4  # 3DGS stops a pixel before T would drop below this
EPS2D = 0.3  # low-pass dilation of the 2D covariance, in px^2 (3DGS, gsplat eps2d)
DEFAULT_BUDGET = 1 << 22  # (tile, pixel, Gaussian) triples per chunk: ~16 MB per float tensor
_FAR_AWAY = -1e4  # log-opacity of the padding Gaussian: exp() is exactly 0


@dataclass
class Projection:
    """Gaussians in one camera: image-plane means, conics and their footprint."""

    means2d: Tensor  # (N, 2) pixel coordinates of the projected means
    conics: Tensor  # (N, 3) upper triangle (a, b, c) of the inverse 2D covariance
    depths: Tensor  # (N,) z of the means in the camera
    covars2d: Tensor  # (N, 2, 2) dilated 2D covariances
    extents: Tensor  # (N, 2) half-width/height in px where alpha falls to 1/255 (no grad)
    radii: Tensor  # (N,) 3 sigma along the major axis in px, 0 where culled (3DGS radii)
    visible: Tensor  # (N,) bool: in front of the near plane and touching the image


def project_gaussians(
    means: Tensor,
    covariances: Tensor,
    opacities: Tensor,
    K: Tensor,
    w2c: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """EWA projection of world Gaussians (means (N, 3), covariances (N, 3, 3)) into a camera."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    cam = means @ R.T + t  # (N, 3)
    cov_cam = R @ covariances @ R.T  # W Sigma W^T, (N, 3, 3)
    x, y, z = cam.unbind(-1)
    in_depth = (z > near_plane) & (z < far_plane)
    # Culled Gaussians get a harmless depth so that no inf/nan reaches the backward pass.
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Like 3DGS/gsplat, evaluate J no further than 30% of the field of view outside the image,
    # where the linearisation of the projection breaks down. The image spans [-0.5, W - 0.5].
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = z * torch.clamp(x / z, -(cx + 0.5) / fx - margin_x, (width - 0.5 - cx) / fx + margin_x)
    ty = z * torch.clamp(y / z, -(cy + 0.5) / fy - margin_y, (height - 0.5 - cy) / fy + margin_y)
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(-1, 2, 3)
    eye = torch.eye(2, dtype=means.dtype, device=means.device)
    covars2d = J @ cov_cam @ J.transpose(-1, -2) + EPS2D * eye  # 3DGS Eq. 5 + dilation
    a, b, c = covars2d[:, 0, 0], covars2d[:, 0, 1], covars2d[:, 1, 1]
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    with torch.no_grad():
        extents, radii, visible = _footprint(means2d, covars2d, opacities, width, height)
        visible &= in_depth
        radii = torch.where(visible, radii, torch.zeros_like(radii))
    return Projection(means2d, conics, z, covars2d, extents, radii, visible)


def _footprint(
    means2d: Tensor, covars2d: Tensor, opacities: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel half-extents (N, 2) of alpha >= 1/255, 3-sigma radii (N,), overlap with the image."""
    a, b, c = covars2d[:, 0, 0], covars2d[:, 0, 1], covars2d[:, 1, 1]
    # o exp(-r^2 / 2) = 1/255 at Mahalanobis radius r; the ellipse's box is r sqrt(diag).
    r2 = 2.0 * torch.log((opacities * 255.0).clamp_min(1.0))
    extents = torch.sqrt(r2[:, None] * torch.stack([a, c], dim=-1))
    mid = 0.5 * (a + c)
    radii = 3.0 * torch.sqrt(mid + torch.sqrt((mid * mid - (a * c - b * b)).clamp_min(0.0)))
    low, high = means2d - extents, means2d + extents
    size = means2d.new_tensor([width - 1, height - 1])
    visible = (r2 > 0) & (high >= 0).all(dim=-1) & (low <= size).all(dim=-1)
    return extents, radii, visible


@torch.no_grad()
def bin_tiles(
    proj: Projection, width: int, height: int, tile_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(tile of each pair, Gaussian of each pair, Gaussians per tile) with pairs by tile then depth.

    A pair is a (tile, Gaussian) whose footprint box touches the tile; within a tile, pairs are
    sorted front to back by the Gaussian's depth.
    """
    tiles_x = math.ceil(width / tile_size)
    num_tiles = tiles_x * math.ceil(height / tile_size)
    order = torch.nonzero(proj.visible).squeeze(1)
    order = order[torch.sort(proj.depths[order], stable=True).indices]  # front to back
    low = torch.ceil(proj.means2d[order] - proj.extents[order])
    high = torch.floor(proj.means2d[order] + proj.extents[order])
    size = proj.means2d.new_tensor([width - 1, height - 1])
    low = torch.minimum(low.clamp_min(0), size).long() // tile_size  # first tile (x, y)
    high = torch.minimum(high.clamp_min(0), size).long() // tile_size  # last tile (x, y)
    span = high - low + 1  # tiles along x and y, (V, 2)
    counts = span[:, 0] * span[:, 1]
    rank = torch.repeat_interleave(torch.arange(len(order), device=order.device), counts)
    local = torch.arange(len(rank), device=order.device) - (counts.cumsum(0) - counts)[rank]
    tile_xy = low[rank] + torch.stack([local % span[rank, 0], local // span[rank, 0]], dim=-1)
    tiles = tile_xy[:, 1] * tiles_x + tile_xy[:, 0]
    tiles, by_tile = torch.sort(tiles, stable=True)  # stable: depth order within each tile
    return tiles, order[rank[by_tile]], torch.bincount(tiles, minlength=num_tiles)


def _pixel_features(tile_size: int, like: Tensor) -> Tensor:
    """(P, 6) quadratic features [x^2, xy, y^2, x, y, 1] of pixel centres about the tile centre."""
    offsets = torch.arange(tile_size, dtype=like.dtype, device=like.device) - (tile_size - 1) / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)], dim=-1)


def _exponent_coefficients(means: Tensor, conics: Tensor, log_opacities: Tensor) -> Tensor:
    """(..., 6, S) coefficients turning pixel features into log(o G(p)) = log o - d^T C d / 2.

    ``means`` (..., S, 2) are relative to the tile centre, so that the expanded quadratic stays
    well conditioned in float32; one matmul then evaluates every pixel against every Gaussian.
    """
    mx, my = means.unbind(-1)
    A, B, C = conics.unbind(-1)
    constant = log_opacities - 0.5 * A * mx * mx - B * mx * my - 0.5 * C * my * my
    terms = [-0.5 * A, -B, -0.5 * C, A * mx + B * my, C * my + B * mx, constant]
    return torch.stack(terms, dim=-2)


def _composite(
    pixel_features: Tensor, coefficients: Tensor, features: Tensor, log_t_in: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of S Gaussians over the pixels of Tc tiles (3DGS Eq. 3).

    pixel_features (P, 6), coefficients (Tc, 6, S), features (Tc, S, C), log_t_in (Tc, P): the
    log-transmittance before these Gaussians (over every Gaussian so far, skipped ones too).
    Returns accumulated features (Tc, P, C), accumulated alpha (Tc, P) and log_t_out (Tc, P).
    """
    alpha = torch.exp(pixel_features @ coefficients).clamp(max=ALPHA_MAX)  # (Tc, P, S)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    log_one_minus = torch.log1p(-alpha)
    log_t_after = log_t_in[..., None] + torch.cumsum(log_one_minus, dim=-1)  # inclusive
    # T only decreases, so "would not take T below 1e-4" keeps a prefix of the list, exactly
    # the Gaussians the CUDA rasterisers blend before they stop.
    blended = log_t_after >= math.log(TRANSMITTANCE_MIN)
    weights = alpha * torch.exp(log_t_after - log_one_minus) * blended  # alpha_i T_i
    return weights @ features, weights.sum(dim=-1), log_t_after[..., -1]


def rasterize(
    proj: Projection,
    log_opacities: Tensor,
    features: Tensor,
    width: int,
    height: int,
    tile_size: int = 8,
    segment: int = 32,
    budget: int = DEFAULT_BUDGET,
) -> tuple[Tensor, Tensor]:
    """Composite per-Gaussian features (N, C) into an (H, W, C) image and its alpha (H, W).

    ``log_opacities`` (N,) are log(o), e.g. logsigmoid of the opacity logits, which stays finite
    where o underflows. Every tile walks its depth-sorted list ``segment`` Gaussians at a time;
    a tile leaves the walk when its list ends or when all its pixels have stopped (T < 1e-4), so
    the work follows what is actually blended rather than the longest list.
    """
    n, channels = features.shape
    dtype, device = features.dtype, features.device
    tiles_x = math.ceil(width / tile_size)
    pixels = tile_size * tile_size
    _, pair_gaussians, tile_counts = bin_tiles(proj, width, height, tile_size)
    tiles = torch.nonzero(tile_counts).squeeze(1)  # (T,) tiles with at least one Gaussian
    counts, starts = tile_counts[tiles], (tile_counts.cumsum(0) - tile_counts)[tiles]
    centres = torch.stack([tiles % tiles_x, tiles // tiles_x], dim=-1).to(dtype) * tile_size
    centres = centres + (tile_size - 1) / 2  # (T, 2)
    means2d, conics, log_opacities, features = _with_padding_gaussian(proj, log_opacities, features)
    pixel_features = _pixel_features(tile_size, features)
    # Up to `budget` triples keep their activations for the backward pass; past that, each
    # step is recomputed there instead (checkpointing), so memory stays bounded.
    stored = 0 if torch.is_grad_enabled() else budget
    last_pair = max(len(pair_gaussians) - 1, 0)

    accumulated = features.new_zeros(len(tiles), pixels, channels)
    alpha = features.new_zeros(len(tiles), pixels)
    log_t = features.new_zeros(len(tiles), pixels)  # log T over every Gaussian walked so far
    for first in range(0, int(counts.max()) if len(tiles) else 0, segment):
        with torch.no_grad():
            stopped = log_t.amax(dim=1) < math.log(TRANSMITTANCE_MIN)
            walking = torch.nonzero((counts > first) & ~stopped).squeeze(1)
        if len(walking) == 0:
            break
        slots = first + torch.arange(segment, device=device)
        for group in walking.split(max(1, budget // (pixels * segment))):
            positions = (starts[group, None] + slots).clamp(max=last_pair)
            index = torch.where(
                slots < counts[group, None], pair_gaussians[positions], torch.full_like(slots, n)
            )  # (Tg, segment) Gaussian ids, front to back
            coefficients = _exponent_coefficients(
                means2d[index] - centres[group, None, :], conics[index], log_opacities[index]
            )  # (Tg, 6, segment)
            args = (pixel_features, coefficients, features[index], log_t[group])
            stored += len(group) * pixels * segment
            if stored > budget:
                out = checkpoint(_composite, *args, use_reentrant=False)
            else:
                out = _composite(*args)
            accumulated = accumulated.index_add(0, group, out[0])
            alpha = alpha.index_add(0, group, out[1])
            log_t = log_t.index_copy(0, group, out[2])

    # Empty tiles stay 0 (the caller adds the background where alpha is short of 1).
    image = _untile(torch.cat([accumulated, alpha[..., None]], dim=-1), tiles, width, height)
    return image[..., :channels], image[..., channels]


def _with_padding_gaussian(
    proj: Projection, log_opacities: Tensor, features: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """means2d, conics, log-opacities and features with a row N appended: a Gaussian of alpha
    exactly 0 that fills tile lists shorter than the segment."""
    return (
        torch.cat([proj.means2d, proj.means2d.new_zeros(1, 2)]),
        torch.cat([proj.conics, proj.conics.new_zeros(1, 3)]),
        torch.cat([log_opacities, log_opacities.new_full((1,), _FAR_AWAY)]),
        torch.cat([features, features.new_zeros(1, features.shape[1])]),
    )


def _untile(values: Tensor, tiles: Tensor, width: int, height: int) -> Tensor:
    """(T, P, C) values of the listed tiles (row-major ids) -> the (H, W, C) image, 0 elsewhere."""
    tile_size = math.isqrt(values.shape[1])
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    channels = values.shape[-1]
    grid = values.new_zeros(tiles_y * tiles_x, tile_size * tile_size, channels)
    grid = grid.index_copy(0, tiles, values).reshape(
        tiles_y, tiles_x, tile_size, tile_size, channels
    )
    image = grid.permute(0, 2, 1, 3, 4).reshape(tiles_y * tile_size, tiles_x * tile_size, channels)
    return image[:height, :width]
