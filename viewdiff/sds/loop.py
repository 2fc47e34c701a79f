"""One score distillation run as an explicit, resumable object: ``ScoreDistillation``.

Every step: draw B groups of N cameras (``viewdiff.sds.cameras``) and one t per group
(``viewdiff.sds.schedules``), render the views of the scene, encode them with gradient, score
them jointly with the multi-view prior (``viewdiff.sds.gradient.distill``) and let
``GaussianFitter`` apply Adam and its density control (clone / split / prune on the view-space
gradients that SDS produced). Image-to-3D gives one view: it sits clean at t = 0 in every group
as the prior's image condition (as in training) and its render is pulled to it by an L2 (+ SSIM)
loss.

All randomness comes from one CPU generator seeded by ``sds.seed`` (cameras, t, noise) and the
fitter's own (splits); a checkpoint holds the scene (PLY), Adam's moments, the density
statistics, both generators and the step, so that a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor

from viewdiff.cameras.pose_features import pose_features
from viewdiff.prior.call import ViewConditions, decode_latents, encode_images, encode_prompts
from viewdiff.prior.load import MultiViewPrior
from viewdiff.scene.checkpoint import (
    FileEntries,
    read_checkpoint,
    read_checkpoint_state,
    write_checkpoint,
)
from viewdiff.scene.fitter import GaussianFitter
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.scene.losses import ssim
from viewdiff.scene.render import RenderOutput, render
from viewdiff.scene.sh import rgb_to_sh0
from viewdiff.sds.cameras import CameraRanges, sample_camera_groups
from viewdiff.sds.config import SdsConfig, fitter_config
from viewdiff.sds.gradient import Distillation, distill, image_target_loss
from viewdiff.sds.schedules import object_timesteps

STATE_FORMAT, WHAT = "viewdiff.sds_state/1", "an SDS checkpoint"


@dataclass(frozen=True)
class ImageCondition:
    """The given view of image-to-3D: its image (3, S, S) in [0, 1] and camera."""

    image: Tensor
    K: Tensor  # (3, 3)
    w2c: Tensor  # (4, 4)


@dataclass
class StepReport:
    """What one step did, for the progress bar, the logs and the pictures."""

    loss: float  # SDS (or recon) loss + image loss
    image_loss: float  # image-to-3D's reconstruction loss (0 without)
    grad_norm: float  # norm of the latent gradient over all views
    timesteps: list[int]  # t of every group
    gaussians: int
    renders: Tensor  # (B, N, 3, S, S) in [0, 1], the views scored
    distillation: Distillation
    conditions: ViewConditions


class PhaseTimer:
    """Wall seconds spent in each phase of the steps (render, encode, prior, backward), summed.

    On CUDA the phases are only separated with ``synchronize`` (which costs a little per step:
    ``bench/sds_step.py`` turns it on, runs do not).
    """

    def __init__(self, device: torch.device, synchronize: bool = False) -> None:
        self.device, self.synchronize = torch.device(device), synchronize
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time the block as ``phase``."""
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[phase] += time.perf_counter() - start


def initial_scene(config: SdsConfig) -> GaussianScene:
    """SDS's start: ``num_gaussians`` grey Gaussians uniform in a ball (seeded)."""
    generator = torch.Generator().manual_seed(config.seed)
    scene = GaussianScene.random_in_sphere(
        config.num_gaussians,
        config.init_radius,
        config.fit.sh_degree,
        config.init_opacity,
        generator=generator,
    )
    # Grey, not random, colours: random ones are noise the prior has to score away first.
    return dataclasses.replace(scene, f_dc=rgb_to_sh0(torch.full_like(scene.means, 0.5)))


class ScoreDistillation:
    """The state of one run: the prior, the scene being optimised, its optimiser, the step."""

    def __init__(
        self,
        prior: MultiViewPrior,
        config: SdsConfig,
        prompt: str,
        scene: GaussianScene,
        ranges: CameraRanges,
        image: ImageCondition | None = None,
    ) -> None:
        export = prior.info.config
        self.prior, self.config, self.prompt, self.ranges, self.image = (
            prior, config, prompt, ranges, image,
        )  # fmt: skip
        self.n_views = config.views or export.data.n_views
        self.size = config.image_size or export.data.image_size
        if self.size % 8 or self.size < 8:
            raise ValueError(f"sds.image_size must be a positive multiple of 8, got {self.size}")
        if image is not None and self.n_views < 2:
            raise ValueError("image-to-3D needs at least 2 views per group (the given + one)")
        if image is not None and tuple(image.image.shape) != (3, self.size, self.size):
            got = tuple(image.image.shape)
            raise ValueError(
                f"the given view is {got}; the renders are (3, {self.size}, {self.size})"
            )
        device = prior.device
        self.scheduler = DDPMScheduler.from_config(prior.scheduler_config)
        text = encode_prompts(prior.text_encoder, prior.tokenizer, [prompt, ""]).float()
        self.text, self.empty_text = text[:1], text[1:]
        scene = scene.to(device, torch.float32)
        # 3DGS's "cameras extent" of cameras on a sphere of the largest radius around the box.
        extent = 1.1 * ranges.radius[1]
        self.fitter = GaussianFitter(scene, None, fitter_config(config), extent=extent)
        self.background_logits = torch.logit(
            torch.tensor(config.fit.background, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        ).to(device)
        self.background_optimizer = None
        if config.learn_background:
            self.background_logits.requires_grad_(True)
            self.background_optimizer = torch.optim.Adam(
                [self.background_logits], lr=config.background_lr
            )
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.timer = PhaseTimer(device)
        self.image_latents = None
        if image is not None:
            pixels = image.image[None, None].to(device) * 2.0 - 1.0  # (1, 1, 3, S, S)
            self.image_latents = encode_images(prior.vae, pixels, sample=False).float()

    @property
    def step_count(self) -> int:
        """Steps done."""
        return self.fitter.iteration

    def background(self) -> Tensor:
        """The background colour (3,) in [0, 1] (learned or fixed)."""
        return torch.sigmoid(self.background_logits)

    def render_view(self, K: Tensor, w2c: Tensor) -> RenderOutput:
        """The scene in one camera at the run's size, over its background."""
        return render(
            self.fitter.scene,
            K,
            w2c,
            self.size,
            self.size,
            background=self.background(),
            backend=self.fitter.config.backend,
            sh_degree=self.fitter.active_sh_degree(),
        )

    def cameras(self) -> tuple[Tensor, Tensor, Tensor]:
        """This step's K (B, N, 3, 3), w2c (B, N, 4, 4) and known (B*N,) bool (given views)."""
        B, N = self.config.batch_size, self.n_views
        K, w2c = sample_camera_groups(self.ranges, B, N, self.size, self.generator)
        known = torch.zeros(B, N, dtype=torch.bool)
        if self.image is not None:  # the given view is view 0 of every group, as in training
            K[:, 0], w2c[:, 0] = self.image.K, self.image.w2c
            known[:, 0] = True
        return K, w2c, known.flatten()

    def step(self) -> StepReport:
        """One SDS step on B groups of N views."""
        config, prior, device, timer = self.config, self.prior, self.prior.device, self.timer
        B, N, S = config.batch_size, self.n_views, self.size
        self.fitter.begin_step()
        K, w2c, known = self.cameras()
        outputs: list[RenderOutput] = []
        with timer("render"):
            views = []
            for row in range(B * N):
                if known[row]:  # the given image stands in for its view; its render is below
                    assert self.image is not None  # rows are known only with an image
                    views.append(self.image.image.to(device))
                    continue
                outputs.append(self.render_view(K.flatten(0, 1)[row], w2c.flatten(0, 1)[row]))
                views.append(outputs[-1].rgb)
            renders = torch.stack(views).unflatten(0, (B, N))  # (B, N, 3, S, S) in [0, 1]
            if self.image is not None:
                outputs.append(self.render_view(self.image.K, self.image.w2c))
        with timer("encode"):
            in_latents = config.target_space == "latent"  # else the encoder needs no gradient
            pixels = renders * 2 - 1  # (B, N, 3, S, S) in [-1, 1]
            latents = encode_images(prior.vae, pixels, sample=False, grad=in_latents).float()
            if self.image_latents is not None:  # the given view's latents: its image's, exactly
                given = known[:, None, None, None].to(device)
                latents = torch.where(given, self.image_latents, latents)
        T = self.scheduler.config.num_train_timesteps
        timesteps = object_timesteps(config, self.step_count - 1, B, T, self.generator)
        noise = torch.randn(latents.shape, generator=self.generator).to(device)
        K, w2c = K.to(device), w2c.to(device)
        conditions = ViewConditions(
            self.text.expand(B, -1, -1),
            self.empty_text.expand(B, -1, -1),
            K,
            w2c,
            pose_features(K, w2c, (S, S)),  # zero intensity stats, as the reference at test time
            (S, S),
        )
        with timer("prior"):
            result = distill(prior.model, self.scheduler, latents, conditions, timesteps, noise,
                             config, known)  # fmt: skip
        loss = result.loss
        if not in_latents:
            with timer("decode"):
                targets = decode_latents(prior.vae, result.latents - result.grad)
            loss = image_target_loss(pixels.flatten(0, 1), targets, known, B)
        with timer("backward"):
            image_loss = torch.zeros((), device=device)
            if self.image is not None:
                rgb, target = outputs[-1].rgb, self.image.image.to(device)
                image_loss = config.image_loss_weight * F.mse_loss(rgb, target)
                if config.image_ssim_weight > 0:
                    image_loss = image_loss + config.image_ssim_weight * (1 - ssim(rgb, target))
                loss = loss + image_loss
            loss.backward()
            if self.background_optimizer is not None:
                self.background_optimizer.step()
                self.background_optimizer.zero_grad(set_to_none=True)
            self.fitter.end_step(outputs)
        return StepReport(
            loss=loss.item(),
            image_loss=image_loss.item(),
            grad_norm=float(result.grad.norm()),
            timesteps=timesteps.tolist(),
            gaussians=self.fitter.params["means"].shape[0],
            renders=renders.detach(),
            distillation=result,
            conditions=conditions,
        )

    # Checkpoints (``viewdiff.scene.checkpoint``): the scene as PLY, every other tensor as
    # safetensors, the rest as JSON, swapped in atomically.

    def save(self, folder: Path) -> Path:
        """Write a resumable checkpoint into ``folder`` (replaced atomically); returns it."""
        tensors, fitter_state = self.fitter.checkpoint_state()
        groups = fitter_state["adam_steps"]
        tensors |= {
            "background_logits": self.background_logits.detach(),
            "generator": self.generator.get_state(),
        }
        if self.background_optimizer is not None:
            state = self.background_optimizer.state.get(self.background_logits, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"background.{key}"] = state[key]
            groups["background"] = float(state["step"]) if "step" in state else 0.0
        state = {
            "step": self.step_count,
            "prompt": self.prompt,
            "adam_steps": groups,
            "view_order": fitter_state["view_order"],
        }
        return write_checkpoint(folder, STATE_FORMAT, self.fitter.scene, tensors, state)

    def load(self, folder: Path) -> None:
        """Continue from a checkpoint of ``save`` (the scene, optimisers, statistics, RNGs)."""
        checkpoint = read_checkpoint(folder, STATE_FORMAT, WHAT, self.prior.device)
        state, tensors = checkpoint.state, checkpoint.tensors
        if state["prompt"] != self.prompt:
            raise ValueError(
                f"{folder}: a checkpoint of {state['prompt']!r}, not of {self.prompt!r}"
            )
        scene = checkpoint.scene.with_sh_degree(self.fitter.config.sh_degree)
        fitter = GaussianFitter(scene, None, self.fitter.config, extent=self.fitter.extent)
        document = FileEntries(state.path, {**state, "iteration": state["step"]})
        fitter.restore_checkpoint_state(tensors, document)
        self.generator.set_state(tensors["generator"].cpu())
        with torch.no_grad():
            self.background_logits.copy_(tensors["background_logits"])
        if self.background_optimizer is not None and "background.exp_avg" in tensors:
            self.background_optimizer.state[self.background_logits] = {
                "step": torch.tensor(state["adam_steps"]["background"]),
                "exp_avg": tensors["background.exp_avg"],
                "exp_avg_sq": tensors["background.exp_avg_sq"],
            }
        self.fitter = fitter


def read_state(folder: Path) -> dict:
    """The JSON state of an SDS checkpoint folder (recovered after an interrupted write),
    checked."""
    return read_checkpoint_state(folder, STATE_FORMAT, WHAT)
