"""Image-conditional novel-view synthesis on held-out objects: PSNR and SSIM, with/without masks.

For every object of a held-out shard set, the first ``known`` of its N views are given clean and
the others are generated at their true cameras (the reference's single-image evaluation:
N = 5 with 1 given, UniPC with 10 steps, guidance 1). Each generated view is compared with the
true one:

- PSNR per view, ``-10 log10(MSE)`` of images in [0, 1], averaged over views (as the reference,
  which does not average the MSE across frames first);
- SSIM per view as the reference computes it (``SSIM_PROTOCOL``): scikit-image's
  ``structural_similarity`` with its defaults (a uniform 7x7 window, sample covariance,
  K1 = 0.01, K2 = 0.03), ``data_range=1`` on images in [0, 1], channels first, the mean of the
  SSIM map without its 3-pixel border, averaged over the channels. (The 11x11 Gaussian,
  zero-padded SSIM of ``viewdiff.scene.losses`` is 3DGS's fitting loss, not this metric: on the
  same pair the two differ by a few hundredths, either way);
- masked: the same over the pixels inside the object's mask (mask > 0.5) only, so that a
  background the prompt never described does not dominate. Masked SSIM averages the library's
  SSIM map over those pixels inside the border (the windows still see the whole image). The
  reference instead composites both images onto white with the soft mask and scores the whole
  image, so our masked numbers are not its "only-fg" ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

METRICS = ("psnr", "ssim", "psnr_masked", "ssim_masked")
MASK_THRESHOLD = 0.5
SSIM_WINDOW = 7
SSIM_PROTOCOL = (
    "scikit-image structural_similarity, uniform 7x7 window, sample covariance, K1 0.01, "
    "K2 0.03, data_range 1.0 on images in [0, 1], map mean without its 3-pixel border "
    "(ViewDiff's: viewdiff/metrics/image_metrics.py)"
)


def to_unit_range(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1], clamped, in float64 (metrics are sums over many pixels)."""
    return ((images.double() + 1.0) / 2.0).clamp(0.0, 1.0)


def _inside(mask: Tensor | None, like: Tensor) -> Tensor:
    """Per-pixel weights (V, 1, H, W): 1 inside the mask (all ones without one), else 0."""
    if mask is None:
        return torch.ones_like(like[:, :1])
    if mask.shape != (like.shape[0], 1, *like.shape[2:]):
        raise ValueError(f"masks {tuple(mask.shape)} do not match images {tuple(like.shape)}")
    return (mask > MASK_THRESHOLD).to(like.dtype)


def view_psnr(images: Tensor, targets: Tensor, masks: Tensor | None = None) -> Tensor:
    """PSNR (V,) in dB of images (V, 3, H, W) in [0, 1]; inf if equal, nan if the mask is empty."""
    weights = _inside(masks, images)
    squared = (images - targets).square() * weights  # (V, 3, H, W)
    pixels = weights.flatten(1).sum(1) * images.shape[1]
    mse = squared.flatten(1).sum(1) / pixels
    return torch.where(pixels > 0, -10.0 * torch.log10(mse), torch.nan)


def _ssim(image: Tensor, target: Tensor) -> tuple[float, np.ndarray]:
    """The library's SSIM and its map (C, H, W) of one image pair (C, H, W) in [0, 1]."""
    return structural_similarity(
        image.detach().cpu().numpy(),
        target.detach().cpu().numpy(),
        win_size=SSIM_WINDOW,
        gaussian_weights=False,
        use_sample_covariance=True,
        data_range=1.0,
        channel_axis=0,
        full=True,
    )


def view_ssim(images: Tensor, targets: Tensor, masks: Tensor | None = None) -> Tensor:
    """SSIM (V,) of images (V, 3, H, W) in [0, 1], averaged inside the masks (nan if empty)."""
    if images.shape != targets.shape:
        raise ValueError(f"SSIM of images {tuple(images.shape)} and {tuple(targets.shape)}")
    weights = _inside(masks, images)
    pad = (SSIM_WINDOW - 1) // 2  # the library leaves the border out of its mean
    values = []
    for image, target, weight in zip(images, targets, weights, strict=True):
        mean, full = _ssim(image, target)
        if masks is None:
            values.append(float(mean))
            continue
        similarity = torch.from_numpy(full).mean(dim=0)[pad:-pad, pad:-pad]  # (H - 6, W - 6)
        inside = weight[0, pad:-pad, pad:-pad].to(similarity)
        pixels = inside.sum()
        values.append(float((similarity * inside).sum() / pixels) if pixels > 0 else math.nan)
    return torch.tensor(values, dtype=torch.float64, device=images.device)


def view_metrics(images: Tensor, targets: Tensor, masks: Tensor | None) -> dict[str, list[float]]:
    """Every metric of ``METRICS`` per view of generated and true views (V, 3, H, W) in [-1, 1]."""
    images, targets = to_unit_range(images), to_unit_range(targets)
    masks = None if masks is None else masks.double()
    values = {
        "psnr": view_psnr(images, targets),
        "ssim": view_ssim(images, targets),
        "psnr_masked": view_psnr(images, targets, masks) if masks is not None else None,
        "ssim_masked": view_ssim(images, targets, masks) if masks is not None else None,
    }
    nan = [math.nan] * images.shape[0]
    return {name: nan if value is None else value.tolist() for name, value in values.items()}


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values (nan when none): an empty mask or an exact view is left out."""
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass
class ObjectResult:
    """The metrics of one held-out object: per generated view and their means."""

    key: str
    category: str
    sequence: str
    prompt: str
    known_frames: list[int]
    generated_frames: list[int]
    views: dict[str, list[float]] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        """Mean of every metric over this object's generated views."""
        return {name: finite_mean(self.views[name]) for name in METRICS}


def summarize(results: list[ObjectResult]) -> dict[str, float]:
    """Mean over objects of the per-object means (each object counts once)."""
    per_object = [result.means() for result in results]
    return {name: finite_mean(means[name] for means in per_object) for name in METRICS}


def results_document(results: list[ObjectResult], settings: dict) -> dict:
    """The JSON document of an evaluation: settings, per-object results and the mean."""
    objects = [{**asdict(result), "mean": result.means()} for result in results]
    return {
        "settings": settings,
        "ssim_protocol": SSIM_PROTOCOL,
        "objects": objects,
        "mean": summarize(results),
    }


def write_results(path: str | Path, results: list[ObjectResult], settings: dict) -> None:
    """Write the evaluation as JSON (nan and inf as null: JSON has neither)."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    document = clean(results_document(results, settings))
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def format_table(results: list[ObjectResult]) -> str:
    """A plain-text table: one row per object, the mean, then the SSIM protocol."""
    header = f"{'object':32s} {'views':>5s} " + " ".join(f"{name:>11s}" for name in METRICS)
    rows = [header, "-" * len(header)]

    def row(name: str, views: str, means: dict[str, float]) -> str:
        return f"{name[:32]:32s} {views:>5s} " + " ".join(f"{means[m]:11.4f}" for m in METRICS)

    for result in results:
        rows.append(row(result.key, str(len(result.generated_frames)), result.means()))
    rows.append("-" * len(header))
    rows.append(row(f"mean of {len(results)} objects", "", summarize(results)))
    rows.append(f"SSIM: {SSIM_PROTOCOL}")
    return "\n".join(rows)
