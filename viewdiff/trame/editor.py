"""TrAME (Luo et al. 2024): text-guided editing of a 3D Gaussian scene with the multi-view prior.

The Trajectory-Anchored Scheme (TAS, Sec. 4.2) interleaves the 2D edit and the 3D update. At
every step k of a decreasing DDIM grid, from ``start`` on:

1. the scene is rendered in every edit view and encoded: z_render;
2. for the keyframes (one batch), then each context (its keyframe and the views up to the next):
   the target estimate is anchored to the render, ``tgt0 <- z_render - f_k (z_render - tgt0)``,
   and the target branch takes one step (``viewdiff.trame.samplers``: DDCM's dual-branch step,
   source branch = the original renders with the source prompt, target branch = the target
   prompt, one noise for both, attention control (VCAC) on, the source consistency correction
   ``tgt0 = tgt_cons + kappa_k (src0 - src_cons)``; or the edit-friendly DDPM branch), blended
   with src0 outside the edit mask (local blending, ``viewdiff.trame.region``);
3. tgt0 is decoded into the pseudo ground truth, and ``updates_k`` GaussianFitter steps per view
   move the scene towards it: L1 + D-SSIM to the pseudo ground truth inside the edit mask and to
   the original render outside it, plus GaussianEditor's anchor loss (means, opacities and scales
   held near their pre-edit values, its weight growing over the trajectory).

``tas=False`` is the ablation "edit every view in 2D, then reconstruct": the same 2D trajectory
without anchoring or updates in between, then the same number of 3D updates toward its final
views. ``vcac=False`` switches attention control and blending off. ``TrameEditor`` holds the
whole state (scene optimiser, tgt0, the sampler's branch, RNGs, the step), takes one trajectory
step at a time and saves / loads a checkpoint (``viewdiff.scene.checkpoint``) after any of them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from viewdiff.editing.editing_model import EditingModel
from viewdiff.inference.trajectory import Trajectory
from viewdiff.prior.call import decode_latents, encode_images
from viewdiff.scene.checkpoint import FileEntries, read_checkpoint, write_checkpoint
from viewdiff.scene.fitter import GaussianFitter, scene_extent
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.scene.losses import ssim
from viewdiff.scene.render import render
from viewdiff.trame.config import TrameConfig
from viewdiff.trame.ddcm import anchor
from viewdiff.trame.dual_prior import DualBranchPrior
from viewdiff.trame.plan import ViewPlan, plan_views
from viewdiff.trame.plan import schedule_value as value_at
from viewdiff.trame.region import latent_masks, object_masks, region_masks
from viewdiff.trame.samplers import SAMPLERS, TargetBranch

STATE_FORMAT, WHAT = "viewdiff.trame-state/1", "a TrAME checkpoint"


def anchor_loss(params: dict[str, Tensor], start: dict[str, Tensor]) -> Tensor:
    """GaussianEditor's anchor loss: squared drift of means, opacity logits and log-scales."""
    names = ("means", "opacity_logits", "log_scales")
    first, *rest = [((params[n] - start[n]) ** 2).mean() for n in names]
    for loss in rest:  # summed in order, as sum() did
        first = first + loss
    return first


def trained_views(config: TrameConfig, views: int) -> list[int]:
    """The edit views the 3D updates use: all but the held-out ones (checked)."""
    outside = [v for v in config.held_out if not 0 <= v < views]
    if outside:
        raise ValueError(f"held-out views {outside} are not among the {views} views")
    trained = [v for v in range(views) if v not in config.held_out]
    if not trained:
        raise ValueError("every edit view is held out: nothing to update the scene with")
    return trained


@dataclass
class StepReport:
    """What one trajectory step did."""

    k: int
    timestep: int
    kappa: float
    f: float
    updates: int
    loss: float
    seconds: float


class TrameEditor:
    """The TrAME loop over one scene and its edit views, one trajectory step at a time."""

    def __init__(
        self,
        editing: EditingModel,
        scene: GaussianScene,
        cameras: Trajectory,
        source_prompt: str,
        prompt: str,
        config: TrameConfig,
        selected: Tensor | None = None,
    ) -> None:
        if editing.kind != "multiview":
            raise ValueError("TrAME edits with the multi-view prior: give an export, not SD")
        self.editing, self.config, self.cameras = editing, config, cameras
        self.source_prompt, self.prompt = source_prompt, prompt
        device = editing.device
        self.background = torch.tensor(config.background, device=device)
        self.original = scene.detach().to(device=device).with_sh_degree(config.fit.sh_degree)
        self.plan: ViewPlan = plan_views(cameras.w2c, config.keyframe_every, config.max_angle_deg)
        self.trained_views = trained_views(config, len(cameras))
        self.object_masks = object_masks(self.original, cameras)  # (V, 1, H, W)
        self.original_renders = self.render_all(self.original)  # (V, 3, H, W) in [0, 1]
        self.src0 = self.encode(self.original_renders)  # (V, C, h, w)
        self.tgt0 = self.src0.clone()
        self.set_region(selected)  # masks (V, 1, H, W), latent_masks (V, 1, h, w)
        self.fitter = GaussianFitter(
            self.original, None, config.fit, extent=scene_extent(cameras.w2c, self.original)
        )
        self.start_params = {k: v.detach().clone() for k, v in self.fitter.params.items()}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.position = 0  # index into config.trajectory_steps of the next step
        self.pseudo: Tensor | None = None  # (V, 3, H, W) the latest pseudo ground truth
        self.prior = DualBranchPrior(editing, cameras, self.plan, config, source_prompt, prompt)
        self.reports: list[StepReport] = []
        self.sampler: TargetBranch = SAMPLERS[config.sampler](self.prior, self.src0)

    def set_region(self, selected: Tensor | None) -> None:
        """Edit only the ``selected`` Gaussians (G,) bool of the original scene (None: all)."""
        self.masks = region_masks(self.original, self.cameras, selected, self.object_masks)
        self.latent_masks = latent_masks(self.masks, self.src0, self.config.mask_grow)

    # Rendering and the VAE.

    def render_all(self, scene: GaussianScene) -> Tensor:
        """Every edit view of ``scene`` (V, 3, H, W) in [0, 1], without gradients."""
        height, width = self.cameras.image_size_hw
        with torch.no_grad():
            return torch.stack([
                render(scene, self.cameras.K[v], self.cameras.w2c[v], height, width,
                       self.background).rgb.clamp(0, 1)
                for v in range(len(self.cameras))
            ])  # fmt: skip

    def encode(self, images: Tensor) -> Tensor:
        """Latents (V, C, h, w) of images (V, 3, H, W) in [0, 1] (posterior means), contiguous:
        the UNet's convolutions round differently on other memory layouts, and a resumed run
        must compute what the uninterrupted one did."""
        with torch.no_grad():
            latents = encode_images(self.editing.vae, (images * 2 - 1)[None], sample=False)
        return latents.contiguous()

    def decode(self, latents: Tensor) -> Tensor:
        """Images (V, 3, H, W) in [0, 1] of latents."""
        with torch.no_grad():
            return ((decode_latents(self.editing.vae, latents) + 1) / 2).clamp(0, 1)

    # The 2D part and the 3D part of a step.

    def edit_2d(self, k: int, z_render: Tensor | None) -> None:
        """Step k of the 2D trajectory for every view: keyframes, then contexts, each batch's
        estimate anchored to the render first (TAS; not without it)."""
        f = value_at(self.config.f, k)
        # One noise for every view (drawn for both samplers: DDPM ignores it, the RNG moves on).
        noise = torch.randn(self.src0.shape, generator=self.generator).to(self.src0)
        blend = self.config.blending(k)
        for views, updated in self.plan.batches():
            tgt0 = self.tgt0[views]
            anchored = None if z_render is None else anchor(tgt0, z_render[views], f)
            mask = self.latent_masks[views] if blend else None
            new = self.sampler.step(k, views, updated, tgt0, anchored, noise[views], mask)
            self.tgt0[updated] = new[[views.index(v) for v in updated]]

    def pseudo_ground_truth(self) -> Tensor:
        """The latest pseudo ground truth (V, 3, H, W); an error before the first 2D edit."""
        if self.pseudo is None:
            raise ValueError("no pseudo ground truth yet: the edit has not run a step")
        return self.pseudo

    def update_3d(self, count: int, k: int) -> float:
        """``count`` GaussianFitter steps toward the pseudo ground truth; the mean loss."""
        if count == 0:
            return 0.0
        height, width = self.cameras.image_size_hw
        fitter, config = self.fitter, self.config
        # Inside the edit mask the pseudo ground truth, outside it the original render.
        targets = self.masks * self.pseudo_ground_truth() + (1 - self.masks) * self.original_renders
        weight = value_at(config.anchor_weight, k)
        total = 0.0
        for _ in range(count):
            pick = int(torch.randint(len(self.trained_views), (1,), generator=self.generator))
            view = self.trained_views[pick]
            fitter.begin_step()
            out = render(fitter.scene, self.cameras.K[view], self.cameras.w2c[view], height,
                         width, self.background, backend=config.fit.backend)  # fmt: skip
            image, target = out.rgb, targets[view]
            loss = (1 - config.lambda_dssim) * (image - target).abs().mean()
            loss = loss + config.lambda_dssim * (1 - ssim(image, target))
            loss = loss + weight * anchor_loss(fitter.params, self.start_params)
            loss.backward()
            fitter.end_step([out])
            total += loss.item()
        return total / count

    # The loop.

    @property
    def done(self) -> bool:
        """Whether every trajectory step (and, without TAS, the reconstruction) has run."""
        return self.position >= len(self.config.trajectory_steps)

    def step(self) -> StepReport:
        """One trajectory step (the last one also reconstructs when TAS is off)."""
        if self.done:
            raise RuntimeError("the trajectory is finished")
        started = time.perf_counter()
        config = self.config
        k = config.trajectory_steps[self.position]
        z_render = self.encode(self.render_all(self.fitter.scene)) if config.tas else None
        self.edit_2d(k, z_render)
        self.pseudo = self.decode(self.tgt0)
        views = len(self.trained_views)
        if config.tas:
            count = int(value_at(config.updates, k)) * views
        else:
            last = self.position == len(config.trajectory_steps) - 1
            count = config.total_updates(views) if last else 0
        loss = self.update_3d(count, k)
        self.position += 1
        report = StepReport(k, int(self.prior.grid[k]), value_at(config.kappa, k),
                            value_at(config.f, k), count, loss,
                            time.perf_counter() - started)  # fmt: skip
        self.reports.append(report)
        return report

    def scene(self) -> GaussianScene:
        """The edited scene so far (detached)."""
        return self.fitter.scene.detach()

    # Checkpoints (``viewdiff.scene.checkpoint``): the scene as PLY, tensors as safetensors, the
    # rest as JSON, swapped in atomically.

    def checkpoint_contents(self) -> tuple[GaussianScene, dict[str, Tensor], dict[str, Any]]:
        """What a checkpoint holds: the scene, the tensors (tgt0, the RNG, the branch's state,
        the pseudo ground truth, the fitter's) and the JSON state."""
        tensors = {"tgt0": self.tgt0, "generator": self.generator.get_state()}
        tensors |= self.sampler.state()
        if self.pseudo is not None:
            tensors["pseudo"] = self.pseudo
        fitter_tensors, fitter_state = self.fitter.checkpoint_state()
        state = {
            "position": self.position,
            "source_prompt": self.source_prompt,
            "prompt": self.prompt,
            "fitter": fitter_state,
            "reports": [dataclasses.asdict(r) for r in self.reports],
        }
        return self.scene(), tensors | fitter_tensors, state

    def save(self, folder: Path) -> Path:
        """Write a resumable checkpoint into ``folder`` (replaced atomically); returns it."""
        return write_checkpoint(folder, STATE_FORMAT, *self.checkpoint_contents())

    def load(self, folder: Path) -> None:
        """Continue from a checkpoint of ``save`` made with the same inputs."""
        checkpoint = read_checkpoint(folder, STATE_FORMAT, WHAT, self.editing.device)
        state, tensors = checkpoint.state, checkpoint.tensors
        if (state["source_prompt"], state["prompt"]) != (self.source_prompt, self.prompt):
            raise ValueError(f"{folder}: a checkpoint of another edit ({state['prompt']!r})")
        scene = checkpoint.scene.with_sh_degree(self.config.fit.sh_degree)
        fitter = GaussianFitter(scene, None, self.config.fit, extent=self.fitter.extent)
        fitter.restore_checkpoint_state(tensors, FileEntries(state.path, state["fitter"]))
        self.fitter = fitter
        self.tgt0 = tensors["tgt0"].to(self.src0).contiguous()
        self.pseudo = tensors.get("pseudo")
        self.sampler.restore(tensors)
        self.generator.set_state(tensors["generator"].cpu())
        self.position = int(state["position"])
        self.reports = [StepReport(**r) for r in state["reports"]]
