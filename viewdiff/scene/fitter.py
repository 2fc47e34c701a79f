"""The optimisation state of one 3D Gaussian scene, one step at a time (Kerbl et al. 2023, Sec. 5
and 7): Adam with per-parameter learning rates (the means' decaying exponentially, scaled by the
cameras' extent), one random view per step, SH bands switched on one by one, and adaptive density
control on 3DGS's schedule (``viewdiff.scene.densification``).

``GaussianFitter`` takes one step at a time so that other loops (TrAME's 3D update, score
distillation, the 3D-consistency metric) can drive it; ``viewdiff.scene.fit.fit`` is the plain
loop around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers
from viewdiff.scene.densification import DensityStats, density_transform, opacity_reset
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.scene.losses import psnr, splatting_loss
from viewdiff.scene.render import RenderOutput, render

if TYPE_CHECKING:  # types only: fit.py imports this module to drive the fitter
    from viewdiff.scene.fit import FitConfig, PosedViews


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
        if extent is None:
            assert self.views is not None  # the check above raised without views and extent
            extent = scene_extent(self.views.w2c, scene)
        self.extent = extent
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
            if self.views is None:
                raise ValueError("this fitter has no views to choose from (it was given an extent)")
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
        transform = density_transform(
            self.params,
            self.stats,
            self.config,
            self.extent,
            self.generator,
            image_size,
            prune_large,
        )
        if transform is not None:
            self.replace_parameters(transform)
        self.stats = DensityStats.zeros(self.params["means"].shape[0], like=self.background)

    @torch.no_grad()
    def reset_opacity(self) -> None:
        """Cap every opacity at 0.01 and forget its Adam moments (3DGS)."""
        self.replace_parameters(opacity_reset)

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
