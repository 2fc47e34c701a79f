"""Adaptive density control of 3D Gaussian Splatting (Kerbl et al. 2023, Sec. 5.2).

Between two passes the fitter accumulates, per Gaussian, the view-space gradient of its projected
mean and its largest screen radius (``DensityStats``). A pass clones the small Gaussians whose
gradient is large, splits the large ones in two, and prunes the transparent (and, after an
opacity reset, the oversized) ones; now and then every opacity is reset to 0.01. Each of these
is a transform of the parameter rows, applied by ``GaussianFitter.replace_parameters`` to the
parameters and their Adam moments alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from viewdiff.scene.gaussians import quaternion_to_rotation
from viewdiff.scene.render import RenderOutput

if TYPE_CHECKING:  # types only: fit.py drives the fitter that uses this module
    from viewdiff.scene.fit import FitConfig

# transform(name, tensor, moment): a parameter (moment False) or its Adam moment (True) -> new rows
ParameterTransform = Callable[[str, Tensor, bool], Tensor]
OPACITY_RESET_LOGIT = math.log(0.01 / 0.99)  # opacities are capped at 0.01 by a reset


@dataclass
class DensityStats:
    """What adaptive density control accumulates per Gaussian between two passes."""

    grad_norm_sum: Tensor  # (N,) sum over views of |d loss / d projected mean| in NDC units
    seen: Tensor  # (N,) number of views the Gaussian was rendered in
    max_radii: Tensor  # (N,) largest 3-sigma screen radius seen, pixels

    @staticmethod
    def zeros(n: int, like: Tensor) -> DensityStats:
        """Empty statistics for n Gaussians."""
        return DensityStats(like.new_zeros(n), like.new_zeros(n), like.new_zeros(n))

    def add(self, out: RenderOutput, width: int, height: int) -> None:
        """Record one rendered view, after its backward pass."""
        visible = out.visible
        # 3DGS thresholds the gradient w.r.t. NDC coordinates: d pixel / d ndc = size / 2.
        grad = out.viewspace_grad() * self.seen.new_tensor([width / 2.0, height / 2.0])
        self.grad_norm_sum[visible] += grad[visible].norm(dim=-1)
        self.seen[visible] += 1
        self.max_radii[visible] = torch.maximum(self.max_radii[visible], out.radii[visible])

    def mean_grad(self) -> Tensor:
        """Mean view-space gradient norm (N,), 0 for Gaussians never seen."""
        return self.grad_norm_sum / self.seen.clamp_min(1)


def density_transform(
    params: dict[str, Tensor],
    stats: DensityStats,
    config: FitConfig,
    extent: float,
    generator: torch.Generator,
    image_size: int,
    prune_large: bool,
) -> ParameterTransform | None:
    """The rows after one densification pass, or None when nothing changes: clone small and
    split large Gaussians with large view-space gradients; prune the transparent (and, with
    ``prune_large``, the oversized) ones."""
    grads = stats.mean_grad()
    max_scale = params["log_scales"].exp().amax(dim=-1)
    prune = torch.sigmoid(params["opacity_logits"]) < config.min_opacity
    if prune_large:
        prune |= stats.max_radii > config.max_screen_fraction * image_size
        prune |= max_scale > 0.1 * extent
    selected = (grads >= config.densify_grad_threshold) & ~prune
    if config.max_gaussians is not None:
        # Each clone or split adds one Gaussian: keep the largest gradients within the cap.
        room = max(config.max_gaussians - int((~prune).sum()), 0)
        if int(selected.sum()) > room:
            ranked = torch.where(selected, grads, torch.full_like(grads, -1.0))
            selected = torch.zeros_like(selected)
            selected[ranked.topk(room).indices] = True
    small = max_scale <= config.percent_dense * extent
    clone, split = selected & small, selected & ~small
    new_rows = _split_rows(params, split, generator)
    new_rows = {k: torch.cat([params[k][clone], v]) for k, v in new_rows.items()}
    keep = ~(prune | split)
    count = next(iter(new_rows.values())).shape[0]

    def transform(name: str, tensor: Tensor, moment: bool) -> Tensor:
        rows = torch.zeros_like(new_rows[name]) if moment else new_rows[name]
        return torch.cat([tensor[keep], rows.to(tensor)])

    if count or not bool(keep.all()):
        return transform
    return None


def opacity_reset(name: str, tensor: Tensor, moment: bool) -> Tensor:
    """Cap every opacity at 0.01 and forget its Adam moments (3DGS): a ``ParameterTransform``."""
    if name != "opacity_logits":
        return tensor
    return torch.zeros_like(tensor) if moment else tensor.clamp(max=OPACITY_RESET_LOGIT)


def _split_rows(
    params: dict[str, Tensor], split: Tensor, generator: torch.Generator
) -> dict[str, Tensor]:
    """Two Gaussians for each split one: drawn from it, scales divided by 1.6 (3DGS)."""
    scales = params["log_scales"][split].exp().repeat(2, 1)  # (2S, 3)
    noise = torch.randn(scales.shape, generator=generator).to(scales)
    rotations = quaternion_to_rotation(params["quats"][split]).repeat(2, 1, 1)
    rows = {name: t[split].repeat(2, *([1] * (t.dim() - 1))) for name, t in params.items()}
    rows["means"] = rows["means"] + (rotations @ (noise * scales)[..., None])[..., 0]
    rows["log_scales"] = torch.log(scales / (0.8 * 2))
    return {name: t.detach() for name, t in rows.items()}
