"""Fit a 3D Gaussian scene to posed images: the optimisation of 3D Gaussian Splatting.

Kerbl et al. 2023, Sec. 5 and 7: Adam with per-parameter learning rates (the means' decaying
exponentially), the L1 + D-SSIM loss (Eq. 7), one random view per step, SH bands switched on one
by one, and adaptive density control: Gaussians whose view-space positional gradient is large
are cloned (small ones) or split in two (large ones), transparent and oversized ones pruned, and
opacities reset now and then. ``GaussianFitter`` holds that state and takes one step at a time,
so that other loops (TrAME's 3D update, the 3D-consistency metric) can drive it; ``fit`` is the
plain loop around it.

Images are (V, 3, H, W) in [0, 1] (convert [-1, 1] batches with (x + 1) / 2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from viewdiff.cameras import camera_centers
from viewdiff.scene.gaussians import GaussianScene, quaternion_to_rotation
from viewdiff.scene.losses import psnr, splatting_loss
from viewdiff.scene.render import RenderOutput, render


@dataclass(frozen=True)
class FitConfig:
    """How to fit: 3DGS's recipe, its schedule shortened for small object scenes."""

    iterations: int = 3000
    """Optimisation steps, one view each (3DGS: 30000)."""
    sh_degree: int = 3
    """SH degree of the fitted colours; lower-degree scenes are zero-padded to it."""
    sh_increase_interval: int = 1000
    """Steps between switching on the next SH band (3DGS: 1000)."""
    lambda_dssim: float = 0.2
    """Weight of the D-SSIM term in the loss (3DGS Eq. 7)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour behind the scene; masked-out pixels of the targets are set to it."""
    position_lr_init: float = 1.6e-4
    """Learning rate of the means at step 0, times the scene extent (3DGS)."""
    position_lr_final: float = 1.6e-6
    """... at the last step; in between it decays exponentially (3DGS)."""
    feature_lr: float = 2.5e-3
    """Learning rate of the SH DC colour; the higher bands get 1/20 of it (3DGS)."""
    opacity_lr: float = 2.5e-2
    """Learning rate of the opacity logits (3DGS)."""
    scaling_lr: float = 5e-3
    """Learning rate of the log-scales (3DGS)."""
    rotation_lr: float = 1e-3
    """Learning rate of the quaternions (3DGS)."""
    percent_dense: float = 0.01
    """Gaussians larger than this fraction of the scene extent are split, smaller cloned."""
    densify_from: int = 100
    """First step of density control (3DGS: 500 of 30000)."""
    densify_until: int = 1500
    """Last step of density control (3DGS: 15000 of 30000, i.e. half the run)."""
    densify_interval: int = 100
    """Steps between density-control passes (3DGS: 100)."""
    densify_grad_threshold: float = 2e-4
    """Mean view-space gradient norm (NDC units, as 3DGS) above which a Gaussian is densified."""
    opacity_reset_interval: int = 1000
    """Steps between opacity resets to 0.01, while densifying (3DGS: 3000 of its 15000)."""
    min_opacity: float = 0.005
    """Gaussians more transparent than this are pruned (3DGS)."""
    max_screen_fraction: float = 0.1
    """After the first opacity reset, prune Gaussians whose 3-sigma screen radius exceeds this
    fraction of the image's longer side (3DGS: 20 px of ~1000; at 64-256 px the 0.3 px^2
    dilation alone gives 1.6 px, so the threshold is relative here)."""
    max_gaussians: int | None = None
    """Cap on the number of Gaussians (None: no cap); densification picks the largest gradients."""
    backend: str = "auto"
    """Render backend: auto (gsplat on CUDA when installed, else torch), torch or gsplat."""
    seed: int = 0
    """Seed of the view order and of the split samples."""


@dataclass
class PosedViews:
    """Images with their cameras: images (V, 3, H, W) in [0, 1], K (V, 3, 3), w2c (V, 4, 4)."""

    images: Tensor
    K: Tensor
    w2c: Tensor
    masks: Tensor | None = None  # (V, 1, H, W) in [0, 1]: 1 on the object

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (V, 3, H, W), got {tuple(self.images.shape)}")
        views, _, height, width = self.images.shape
        if self.K.shape != (views, 3, 3) or self.w2c.shape != (views, 4, 4):
            got = f"{tuple(self.K.shape)} and {tuple(self.w2c.shape)}"
            raise ValueError(
                f"{views} images need K ({views}, 3, 3), w2c ({views}, 4, 4); got {got}"
            )
        if self.masks is not None and self.masks.shape != (views, 1, height, width):
            got = tuple(self.masks.shape)
            raise ValueError(f"masks must be ({views}, 1, {height}, {width}), got {got}")
        low, high = self.images.amin(dim=(1, 2, 3)), self.images.amax(dim=(1, 2, 3))
        bad = torch.nonzero((low < -1e-3) | (high > 1 + 1e-3)).flatten().tolist()
        if bad:
            raise ValueError(
                f"images of views {bad} are outside [0, 1] (min {low.min():.3f}, max "
                f"{high.max():.3f}); convert [-1, 1] images with (x + 1) / 2"
            )

    @property
    def num_views(self) -> int:
        """V."""
        return self.images.shape[0]

    def targets(self, background: Tensor) -> Tensor:
        """The images with masked-out pixels set to the background colour (V, 3, H, W)."""
        if self.masks is None:
            return self.images
        return self.images * self.masks + background[:, None, None] * (1.0 - self.masks)

    def to(self, like: Tensor) -> PosedViews:
        """The views on ``like``'s device and dtype."""
        masks = None if self.masks is None else self.masks.to(like)
        return PosedViews(self.images.to(like), self.K.to(like), self.w2c.to(like), masks)


@dataclass
class FitResult:
    """The fitted scene and how well it reproduces the views."""

    scene: GaussianScene
    train_psnr: list[float]  # per training view, dB
    test_psnr: list[float] | None  # per held-out view, dB (None without test views)
    losses: list[float]  # loss of every step
    seconds: float


def scene_extent(w2c: Tensor, scene: GaussianScene) -> float:
    """3DGS's "cameras extent": 1.1 x the largest distance of a camera from their mean centre."""
    centres = camera_centers(w2c)
    radius = (centres - centres.mean(dim=0)).norm(dim=-1).amax().item()
    if radius < 1e-6:  # a single camera (or all at one place): its distance to the scene
        radius = (centres[0] - scene.means.detach().mean(dim=0)).norm().item()
    return 1.1 * radius


def position_lr(config: FitConfig, step: int, extent: float) -> float:
    """Learning rate of the means at ``step``: exponential from init to final (3DGS)."""
    t = min(max(step / max(config.iterations, 1), 0.0), 1.0)
    log_lr = math.log(config.position_lr_init) * (1 - t) + math.log(config.position_lr_final) * t
    return math.exp(log_lr) * extent


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


class GaussianFitter:
    """The optimisation state of one scene: parameters, Adam, density statistics, the step count.

    ``targets`` (V, 3, H, W) are what the loss compares renders with (the images, masked onto
    the background); a caller may replace them between steps, e.g. with edited views.

    A loop with a loss of its own (score distillation) passes no views but the scene ``extent``,
    and drives the fitter with ``begin_step`` / its own renders and backward / ``end_step``.
    """

    def __init__(
        self,
        scene: GaussianScene,
        views: PosedViews | None,
        config: FitConfig,
        extent: float | None = None,
    ) -> None:
        if views is None and extent is None:
            raise ValueError("GaussianFitter needs views or the scene extent")
        self.config = config
        self.views = None if views is None else views.to(scene.means)
        self.background = torch.tensor(config.background).to(scene.means)
        self.targets = None if self.views is None else self.views.targets(self.background)
        self.extent = scene_extent(self.views.w2c, scene) if extent is None else extent
        start = scene.detach().with_sh_degree(config.sh_degree)
        self.params = {name: t.requires_grad_(True) for name, t in start.tensors().items()}
        lrs = {
            "means": position_lr(config, 0, self.extent),
            "log_scales": config.scaling_lr,
            "quats": config.rotation_lr,
            "opacity_logits": config.opacity_lr,
            "f_dc": config.feature_lr,
            "f_rest": config.feature_lr / 20.0,
        }
        groups = [
            {"params": [self.params[name]], "lr": lr, "name": name} for name, lr in lrs.items()
        ]
        self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.stats = DensityStats.zeros(start.num_gaussians, like=start.means)
        self.iteration = 0
        self._view_order: list[int] = []

    @property
    def scene(self) -> GaussianScene:
        """The scene being optimised (its tensors are the live, grad-requiring parameters)."""
        return GaussianScene(**self.params)

    def active_sh_degree(self) -> int:
        """SH bands in use at this step: one more every ``sh_increase_interval`` steps."""
        interval = max(self.config.sh_increase_interval, 1)
        return min(self.iteration // interval, self.config.sh_degree)

    def next_view(self) -> int:
        """A view index: the views in random order, reshuffled when all were seen (3DGS)."""
        if not self._view_order:
            order = torch.randperm(self.views.num_views, generator=self.generator)
            self._view_order = order.tolist()
        return self._view_order.pop()

    def begin_step(self) -> None:
        """Count a step and set its learning rates; the caller renders, backpropagates and
        calls ``end_step``."""
        self.iteration += 1
        self.optimizer.param_groups[0]["lr"] = position_lr(self.config, self.iteration, self.extent)

    def end_step(self, renders: Sequence[RenderOutput]) -> None:
        """After the backward pass through ``renders``: Adam, then density control on their
        view-space gradients (3DGS's schedule), then zero the gradients."""
        with torch.no_grad():
            self.optimizer.step()
            if self.iteration <= self.config.densify_until:
                for out in renders:
                    self.stats.add(out, out.rgb.shape[-1], out.rgb.shape[-2])
                self._density_control(max(renders[0].rgb.shape[-2:]))
            self.optimizer.zero_grad(set_to_none=True)

    def step(self, view: int | None = None) -> float:
        """One optimisation step on one view (random if None); returns the loss."""
        if self.views is None or self.targets is None:
            raise ValueError("this fitter has no views: drive it with begin_step / end_step")
        view = self.next_view() if view is None else view
        self.begin_step()
        height, width = self.targets.shape[-2:]
        out = render(
            self.scene,
            self.views.K[view],
            self.views.w2c[view],
            height,
            width,
            background=self.background,
            backend=self.config.backend,
            sh_degree=self.active_sh_degree(),
        )
        loss = splatting_loss(out.rgb, self.targets[view], self.config.lambda_dssim)
        loss.backward()
        self.end_step([out])
        return loss.item()

    def checkpoint_state(self) -> tuple[dict[str, Tensor], dict]:
        """What a checkpoint needs besides the scene: Adam's moments, the density statistics and
        the RNG as tensors; Adam's step counts, the iteration and the view order as JSON."""
        tensors, steps = {}, {}
        for group in self.optimizer.param_groups:
            name, state = group["name"], self.optimizer.state.get(group["params"][0], {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"adam.{name}.{key}"] = state[key]
            steps[name] = float(state["step"]) if "step" in state else 0.0
        tensors |= {
            "stats.grad_norm_sum": self.stats.grad_norm_sum,
            "stats.seen": self.stats.seen,
            "stats.max_radii": self.stats.max_radii,
            "fitter_generator": self.generator.get_state(),
        }
        document = {
            "adam_steps": steps,
            "iteration": self.iteration,
            "view_order": self._view_order,
        }
        return tensors, document

    def restore_checkpoint_state(self, tensors: dict[str, Tensor], document: dict) -> None:
        """Take back what ``checkpoint_state`` returned, into a fitter of the saved scene."""
        self.iteration = int(document["iteration"])
        self._view_order = list(document["view_order"])
        for group in self.optimizer.param_groups:
            name, param = group["name"], group["params"][0]
            if f"adam.{name}.exp_avg" in tensors:
                self.optimizer.state[param] = {
                    "step": torch.tensor(document["adam_steps"][name]),
                    "exp_avg": tensors[f"adam.{name}.exp_avg"],
                    "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"],
                }
        self.stats = DensityStats(
            tensors["stats.grad_norm_sum"], tensors["stats.seen"], tensors["stats.max_radii"]
        )
        self.generator.set_state(tensors["fitter_generator"].cpu())
        # Adam's learning rate of the means at this step (begin_step sets it from the next one).
        self.optimizer.param_groups[0]["lr"] = position_lr(self.config, self.iteration, self.extent)

    def _density_control(self, image_size: int) -> None:
        """3DGS's schedule: densify and prune every interval, reset opacities now and then."""
        config, step = self.config, self.iteration
        if step > config.densify_from and step % config.densify_interval == 0:
            # Like 3DGS, oversized Gaussians are only pruned once opacities have been reset.
            self.densify_and_prune(image_size, prune_large=step > config.opacity_reset_interval)
        if step % config.opacity_reset_interval == 0:
            self.reset_opacity()

    @torch.no_grad()
    def densify_and_prune(self, image_size: int, prune_large: bool) -> None:
        """Clone small and split large Gaussians with large view-space gradients; prune the
        transparent (and, with ``prune_large``, the oversized) ones (3DGS Sec. 5.2)."""
        config, p = self.config, self.params
        grads = self.stats.mean_grad()
        max_scale = p["log_scales"].exp().amax(dim=-1)
        prune = torch.sigmoid(p["opacity_logits"]) < config.min_opacity
        if prune_large:
            prune |= self.stats.max_radii > config.max_screen_fraction * image_size
            prune |= max_scale > 0.1 * self.extent
        selected = (grads >= config.densify_grad_threshold) & ~prune
        if config.max_gaussians is not None:
            # Each clone or split adds one Gaussian: keep the largest gradients within the cap.
            room = max(config.max_gaussians - int((~prune).sum()), 0)
            if int(selected.sum()) > room:
                ranked = torch.where(selected, grads, torch.full_like(grads, -1.0))
                selected = torch.zeros_like(selected)
                selected[ranked.topk(room).indices] = True
        small = max_scale <= config.percent_dense * self.extent
        clone, split = selected & small, selected & ~small
        new_rows = _split_rows(p, split, self.generator)
        new_rows = {k: torch.cat([p[k][clone], v]) for k, v in new_rows.items()}
        keep = ~(prune | split)
        count = next(iter(new_rows.values())).shape[0]

        def transform(name: str, tensor: Tensor, moment: bool) -> Tensor:
            rows = torch.zeros_like(new_rows[name]) if moment else new_rows[name]
            return torch.cat([tensor[keep], rows.to(tensor)])

        if count or not bool(keep.all()):
            self.replace_parameters(transform)
        self.stats = DensityStats.zeros(self.params["means"].shape[0], like=self.background)

    @torch.no_grad()
    def reset_opacity(self) -> None:
        """Cap every opacity at 0.01 and forget its Adam moments (3DGS)."""
        cap = math.log(0.01 / 0.99)

        def transform(name: str, tensor: Tensor, moment: bool) -> Tensor:
            if name != "opacity_logits":
                return tensor
            return torch.zeros_like(tensor) if moment else tensor.clamp(max=cap)

        self.replace_parameters(transform)

    def replace_parameters(self, transform: Callable[[str, Tensor, bool], Tensor]) -> None:
        """Swap every parameter for ``transform(name, tensor, False)`` and its Adam moments for
        ``transform(name, moment, True)`` (density control adds and removes rows)."""
        for group in self.optimizer.param_groups:
            name, old = group["name"], group["params"][0]
            state = self.optimizer.state.pop(old, None)
            new = transform(name, old.detach(), False).contiguous().requires_grad_(True)
            group["params"][0] = self.params[name] = new
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = transform(name, state[key], True).contiguous()
                self.optimizer.state[new] = state

    def evaluate(self, views: PosedViews) -> list[float]:
        """PSNR (dB) of the current scene in every view, all SH bands on."""
        views = views.to(self.background)
        targets = views.targets(self.background)
        height, width = views.images.shape[-2:]
        scene = self.scene.detach()
        psnrs = []
        with torch.no_grad():
            for v in range(views.num_views):
                K, w2c = views.K[v], views.w2c[v]
                out = render(scene, K, w2c, height, width, self.background, self.config.backend)
                psnrs.append(psnr(out.rgb, targets[v]))
        return psnrs


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


def fit(
    scene: GaussianScene,
    views: PosedViews,
    config: FitConfig | None = None,
    test_views: PosedViews | None = None,
    callback: Callable[[GaussianFitter, float], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Optimise ``scene`` (not modified) to reproduce ``views``; PSNR on them and on test views.

    ``callback(fitter, loss)`` runs after every step (e.g. to log, or to change the targets).
    """
    config = config or FitConfig()
    if config.iterations < 1:
        raise ValueError(f"FitConfig.iterations must be >= 1, got {config.iterations}")
    start = time.perf_counter()
    fitter = GaussianFitter(scene, views, config)
    losses = []
    bar = tqdm(range(config.iterations), desc="fit 3D Gaussians", disable=not progress)
    for _ in bar:
        losses.append(fitter.step())
        if callback is not None:
            callback(fitter, losses[-1])
        if fitter.iteration % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", gaussians=fitter.params["means"].shape[0])
    return FitResult(
        scene=fitter.scene.detach(),
        train_psnr=fitter.evaluate(views),
        test_psnr=None if test_views is None else fitter.evaluate(test_views),
        losses=losses,
        seconds=time.perf_counter() - start,
    )
