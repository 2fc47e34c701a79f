"""Render a Gaussian scene into one OpenCV camera: PyTorch everywhere, gsplat on CUDA.

Both backends take our cameras (viewdiff.cameras.conventions: K in pixels with pixel centres at
integer coordinates, w2c world-to-camera, x right / y down / z forward) and give the same outputs;
the half-pixel shift to gsplat's corner-anchored pixels happens at its boundary, here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.scene.rasterize import project_gaussians, rasterize
from viewdiff.scene.sh import eval_sh

Backend = Literal["auto", "torch", "gsplat"]
BACKENDS: tuple[str, ...] = get_args(Backend)


@dataclass
class RenderOutput:
    """One rendered view and what densification needs to know about each Gaussian in it."""

    rgb: Tensor  # (3, H, W), colours composited over the background
    alpha: Tensor  # (1, H, W), accumulated opacity
    depth: Tensor  # (1, H, W), expected z-depth sum(w z) / sum(w), 0 where alpha is 0
    means2d: Tensor  # (N, 2), projected means in pixels (our convention), detached
    radii: Tensor  # (N,), 3-sigma screen radius in pixels, 0 for culled Gaussians
    visible: Tensor  # (N,) bool, rendered in this view
    viewspace_points: Tensor  # the projected means whose .grad the backward pass fills
    backend: str  # "torch" or "gsplat"

    def viewspace_grad(self) -> Tensor:
        """d loss / d projected mean (N, 2) in pixels, after backward (zeros before)."""
        grad = self.viewspace_points.grad
        if grad is None:
            return torch.zeros_like(self.means2d)
        return grad.reshape(-1, 2)


def gsplat_available() -> bool:
    """Whether the gsplat package can be imported (it only runs on CUDA)."""
    return importlib.util.find_spec("gsplat") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``auto`` stands for on this device, checked against what is installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise ValueError(f"the gsplat backend needs a scene on CUDA, got device {device}")
        if not gsplat_available():
            raise ValueError("the gsplat backend needs `pip install gsplat` (the gpu extra)")
    return backend


def background_tensor(background: Tensor | Sequence[float] | float | None, like: Tensor) -> Tensor:
    """The background colour as a (3,) tensor on ``like``'s device and dtype (None: black)."""
    if background is None:
        return like.new_zeros(3)
    value = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        value = value.expand(3)
    if value.shape != (3,):
        raise ValueError(f"background must be one value or 3 (RGB), got shape {tuple(value.shape)}")
    return value


def render(
    scene: GaussianScene,
    K: Tensor,
    w2c: Tensor,
    height: int,
    width: int,
    background: Tensor | Sequence[float] | float | None = None,
    backend: Backend = "auto",
    sh_degree: int | None = None,
    near_plane: float = 0.01,
) -> RenderOutput:
    """Render ``scene`` with intrinsics K (3, 3) and extrinsics w2c (4, 4) into an H x W image.

    Differentiable w.r.t. every scene parameter. ``sh_degree`` limits the SH bands used
    (default: all the scene has). Cameras are moved to the scene's device and dtype.
    """
    if K.shape != (3, 3) or w2c.shape != (4, 4):
        got = f"{tuple(K.shape)}, {tuple(w2c.shape)}"
        raise ValueError(f"render takes one camera: K (3, 3), w2c (4, 4); got {got}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    degree = scene.sh_degree if sh_degree is None else sh_degree
    if not 0 <= degree <= scene.sh_degree:
        raise ValueError(f"sh_degree {sh_degree} outside the scene's 0..{scene.sh_degree}")
    like = scene.means
    K, w2c = K.to(like), w2c.to(like)
    background = background_tensor(background, like)
    if resolve_backend(backend, like.device) == "gsplat":
        return _render_gsplat(scene, K, w2c, height, width, background, degree, near_plane)
    return _render_torch(scene, K, w2c, height, width, background, degree, near_plane)


def _render_torch(
    scene: GaussianScene,
    K: Tensor,
    w2c: Tensor,
    height: int,
    width: int,
    background: Tensor,
    sh_degree: int,
    near_plane: float,
) -> RenderOutput:
    """The PyTorch rasteriser (viewdiff.scene.rasterize)."""
    log_opacities = torch.nn.functional.logsigmoid(scene.opacity_logits)
    proj = project_gaussians(
        scene.means, scene.covariances(), log_opacities.exp(), K, w2c, width, height, near_plane
    )
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()  # the view-space gradient that drives densification
    directions = scene.means - camera_centers(w2c)
    colours = eval_sh(sh_degree, scene.sh_coeffs(), directions)  # (N, 3)
    features = torch.cat([colours, proj.depths[:, None]], dim=-1)  # depth rides along
    image, alpha = rasterize(proj, log_opacities, features, width, height)  # (H, W, 4), (H, W)
    rgb = image[..., :3] + (1.0 - alpha[..., None]) * background
    depth = image[..., 3] / alpha.clamp_min(1e-10)
    return RenderOutput(
        rgb=rgb.permute(2, 0, 1),
        alpha=alpha[None],
        depth=depth[None],
        means2d=proj.means2d.detach(),
        radii=proj.radii,
        visible=proj.visible,
        viewspace_points=proj.means2d,
        backend="torch",
    )


def _render_gsplat(
    scene: GaussianScene,
    K: Tensor,
    w2c: Tensor,
    height: int,
    width: int,
    background: Tensor,
    sh_degree: int,
    near_plane: float,
) -> RenderOutput:
    """gsplat's CUDA rasteriser ("classic" mode: no opacity compensation), imported lazily."""
    from gsplat import rasterization

    # gsplat puts pixel centres at +0.5: the same physical camera has its principal point there.
    K_gsplat = K.clone()
    K_gsplat[:2, 2] += 0.5
    colours, alphas, meta = rasterization(
        scene.means,
        scene.quats,
        scene.scales(),
        scene.opacities(),
        scene.sh_coeffs(),
        w2c[None],
        K_gsplat[None],
        width,
        height,
        near_plane=near_plane,
        sh_degree=sh_degree,
        packed=False,
        backgrounds=background[None],
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # (1, H, W, 4), (1, H, W, 1)
    means2d = meta["means2d"]  # (1, N, 2)
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"][0]
    if radii.dim() == 2:  # newer gsplat: per-axis radii (N, 2)
        radii = radii.max(dim=-1).values
    return RenderOutput(
        rgb=colours[0, ..., :3].permute(2, 0, 1),
        alpha=alphas[0].permute(2, 0, 1),
        depth=colours[0, ..., 3:].permute(2, 0, 1),
        means2d=means2d[0].detach() - 0.5,
        radii=radii.to(scene.means.dtype),
        visible=radii > 0,
        viewspace_points=means2d,
        backend="gsplat",
    )
