"""Image losses of 3D Gaussian splatting: L1, SSIM (written here, no torchvision), PSNR.

Images are (..., C, H, W) in [0, 1]. The fitting loss is 3DGS Eq. 7:
(1 - lambda) L1 + lambda (1 - SSIM), lambda = 0.2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# The usual SSIM stabilisers for a dynamic range of 1 (Wang et al. 2004): (0.01 L)^2, (0.03 L)^2.
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def gaussian_window(
    size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, like: Tensor | None = None
) -> Tensor:
    """A normalised 2D Gaussian window (size, size), separable, as 3DGS's SSIM uses."""
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else None
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(image: Tensor, target: Tensor, window_size: int = SSIM_WINDOW) -> Tensor:
    """Per-pixel SSIM (..., C, H, W) between two images in [0, 1], zero-padded like 3DGS."""
    if image.shape != target.shape:
        raise ValueError(f"SSIM of images of different shapes {image.shape} and {target.shape}")
    batch_shape, (channels, height, width) = image.shape[:-3], image.shape[-3:]
    x = image.reshape(-1, channels, height, width)
    y = target.reshape(-1, channels, height, width)
    window = gaussian_window(window_size, like=x).expand(channels, 1, window_size, window_size)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, window, padding=window_size // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov_xy = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (numerator / denominator).reshape(*batch_shape, channels, height, width)


def ssim(image: Tensor, target: Tensor, window_size: int = SSIM_WINDOW) -> Tensor:
    """Mean SSIM of two images (..., C, H, W) in [0, 1]: 1 for identical images."""
    return ssim_map(image, target, window_size).mean()


def l1_loss(image: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error."""
    return (image - target).abs().mean()


def splatting_loss(image: Tensor, target: Tensor, lambda_dssim: float = 0.2) -> Tensor:
    """3DGS Eq. 7: (1 - lambda) L1 + lambda (1 - SSIM)."""
    return (1.0 - lambda_dssim) * l1_loss(image, target) + lambda_dssim * (
        1.0 - ssim(image, target)
    )


def psnr(image: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (inf for identical images)."""
    mse = (image.detach().clamp(0, 1) - target).square().mean().item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
