"""TrAME (Luo et al. 2024): text-guided editing of a 3D Gaussian scene with the multi-view prior.

The Trajectory-Anchored Scheme (TAS, Sec. 4.2) interleaves the 2D edit and the 3D update. At
every step k of a decreasing DDIM grid, from ``start`` on:

1. the scene is rendered in every edit view and encoded: z_render;
2. for the keyframes (one batch), then each context (its keyframe and the views up to the next):
   the target estimate is anchored to the render, ``tgt0 <- z_render - f_k (z_render - tgt0)``,
   one dual-branch DDCM step runs (``viewdiff.trame.ddcm``: source branch = the original renders
   with the source prompt, target branch = the target prompt, one noise for both, attention control
   on), and the source consistency correction gives ``tgt0 = tgt_cons + kappa_k (src0 - src_cons)``,
   blended with src0 outside the edit mask (local blending);
3. tgt0 is decoded into the pseudo ground truth, and ``updates_k`` GaussianFitter steps per view
   move the scene towards it: L1 + D-SSIM to the pseudo ground truth inside the edit mask and to
   the original render outside it, plus GaussianEditor's anchor loss (means, opacities and scales
   held near their pre-edit values, its weight growing over the trajectory).

``sampler="ddpm"`` replaces DDCM by the edit-friendly DDPM noise space of the inversion issue:
the original renders are inverted once (per batch of the plan), the source branch is that
trajectory and the target branch steps with its noise maps.

``tas=False`` is the ablation "edit every view in 2D, then reconstruct": the same 2D trajectory
without anchoring or updates in between, then the same number of 3D updates toward its final
views. ``vcac=False`` switches attention control and blending off. ``TrameEditor`` holds the
whole state (scene optimiser, tgt0, RNGs, the step), takes one trajectory step at a time and
saves / loads a checkpoint after any of them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from viewdiff.cameras import pose_features
from viewdiff.editing.editing_model import EditingModel
from viewdiff.editing.inversion import invert, step_with_noise
from viewdiff.inference.trajectory import Trajectory
from viewdiff.prior.call import (
    ViewConditions,
    decode_latents,
    encode_images,
    encode_prompts,
    prior_predictions,
)
from viewdiff.scene.fit import GaussianFitter, scene_extent
from viewdiff.scene.gaussians import GaussianScene, read_gaussian_ply, write_gaussian_ply
from viewdiff.scene.losses import ssim
from viewdiff.scene.render import render
from viewdiff.scene.sh import rgb_to_sh0
from viewdiff.trame.attention_control import (
    AttentionControl,
    AttentionRecord,
    changed_words,
    token_alignment,
)
from viewdiff.trame.config import TrameConfig
from viewdiff.trame.ddcm import alpha_bar_at, anchor, clean_estimate, ddcm_target, noisy_pair
from viewdiff.trame.plan import ViewPlan, plan_views
from viewdiff.trame.plan import schedule_value as value_at
from viewdiff.trame.region import normalise_maps

STATE_FORMAT = "viewdiff.trame-state/1"
SCENE_FILE, TENSORS_FILE, STATE_FILE = "scene.ply", "state.safetensors", "state.json"


def edit_masks(scene: GaussianScene, cameras: Trajectory, selected: Tensor | None) -> Tensor:
    """Per view (V, 1, H, W) in [0, 1]: the rendered opacity of the selected Gaussians (all when
    None), which is where the edit may act."""
    height, width = cameras.image_size_hw
    weights = torch.ones(scene.num_gaussians, device=scene.means.device)
    if selected is not None:
        weights = selected.to(weights)
    # Render the selection as colour: white Gaussians where selected, black elsewhere.
    marked = dataclasses.replace(
        scene.detach(),
        f_dc=rgb_to_sh0(weights[:, None].expand(-1, 3)),
        f_rest=scene.f_rest.detach()[:, :0],
    )
    masks = []
    with torch.no_grad():
        for v in range(len(cameras)):
            out = render(marked, cameras.K[v], cameras.w2c[v], height, width, 0.0)
            masks.append(out.rgb[:1].clamp(0, 1))
    return torch.stack(masks)


def anchor_loss(params: dict[str, Tensor], start: dict[str, Tensor]) -> Tensor:
    """GaussianEditor's anchor loss: squared drift of means, opacity logits and log-scales."""
    names = ("means", "opacity_logits", "log_scales")
    return sum(((params[n] - start[n]) ** 2).mean() for n in names)


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
        outside = [v for v in config.held_out if not 0 <= v < len(cameras)]
        if outside:
            raise ValueError(f"held-out views {outside} are not among the {len(cameras)} views")
        self.trained_views = [v for v in range(len(cameras)) if v not in config.held_out]
        if not self.trained_views:
            raise ValueError("every edit view is held out: nothing to update the scene with")
        self.object_masks = edit_masks(self.original, cameras, None)  # (V, 1, H, W)
        coverage = self.object_masks.flatten(1).amax(1)  # (V,)
        unseen = torch.nonzero(coverage < 0.5).flatten().tolist()
        if unseen:
            raise ValueError(
                f"the scene is not in view of cameras {unseen} of {len(cameras)}: are the scene "
                "and the cameras of the same scene?"
            )
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
        texts = encode_prompts(editing.text_encoder, editing.tokenizer, [source_prompt, prompt])
        empty = encode_prompts(editing.text_encoder, editing.tokenizer, [""])
        self.texts, self.empty = texts, empty  # (2, 77, D): source, target; (1, 77, D)
        self.alignment = token_alignment(editing.tokenizer, source_prompt, prompt)
        self.scheduler = editing.scheduler()
        self.scheduler.set_timesteps(config.steps)
        self.grid = self.scheduler.timesteps.clone()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.clone()
        self.reports: list[StepReport] = []
        if config.sampler == "ddpm":  # the source branch is the inversion of the renders
            self.source_xs, self.source_zs = self.invert_sources()
            self.x_tgt = self.source_xs[config.start].clone()

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

    def _latent_masks(self) -> Tensor:
        """The edit masks at latent resolution (V, 1, h, w), grown by ``mask_grow``."""
        h, w = self.src0.shape[-2:]
        masks = torch.nn.functional.adaptive_max_pool2d(self.masks, (h, w))
        masks = (masks > 0.5).to(self.src0)
        grow = self.config.mask_grow
        if grow:
            masks = torch.nn.functional.max_pool2d(masks, 2 * grow + 1, stride=1, padding=grow)
        return masks

    # The 2D part: one dual-branch step of a group of views.

    def control(
        self, k: int, views: list[int], record: AttentionRecord | None = None
    ) -> AttentionControl | None:
        """The attention control of step k for a batch of ``views`` (None when VCAC is off and
        nothing is recorded); a context batch propagates its keyframe's keys and values."""
        n_views = len(views)
        if not self.config.vcac:
            return None if record is None else AttentionControl(n_views, record=record)
        fraction = self.config.fraction(k)
        shared, index = self.alignment
        return AttentionControl(
            n_views,
            inject_self=fraction < self.config.inject_self_until,
            replace_cross=fraction < self.config.replace_cross_until,
            propagate_first=views != self.plan.keyframes and fraction < self.config.propagate_until,
            shared_tokens=shared,
            source_index=index,
            record=record,
        )

    def attention_maps(self, words: tuple[list[int], list[int]] | None = None) -> Tensor:
        """Per edit view (V, H, W) in [0, 1]: the prior's cross-attention to the changed words
        (source words in the source branch, target words in the target branch; ``words``
        overrides them), from one dual call per batch at the first trajectory step."""
        tokenizer = self.editing.tokenizer
        source_words, target_words = words or (
            changed_words(tokenizer, self.prompt, self.source_prompt),
            changed_words(tokenizer, self.source_prompt, self.prompt),
        )
        if not source_words and not target_words:
            raise ValueError(
                f"{self.source_prompt!r} and {self.prompt!r} share every word: no edit region "
                "can be traced from changed words"
            )
        k = self.config.start
        alpha_bar = alpha_bar_at(self.alphas_cumprod, self.grid[k])
        generator = torch.Generator().manual_seed(self.config.seed + 2)
        noise = torch.randn(self.src0.shape, generator=generator).to(self.src0)
        maps = torch.zeros(self.src0.shape[0], *self.src0.shape[-2:])
        for group, updated in self.groups():
            record = AttentionRecord(source_words, target_words, tuple(self.src0.shape[-2:]))
            x_s, x_t = noisy_pair(self.src0[group], self.src0[group], noise[group], alpha_bar)
            self.branch_predictions(group, x_s, x_t, k, record)
            keep = [group.index(v) for v in updated]
            maps[updated] = record.mean_map()[keep]
        size = self.cameras.image_size_hw
        upsampled = torch.nn.functional.interpolate(maps[:, None], size=size, mode="bilinear")
        return normalise_maps(upsampled[:, 0])

    def set_region(self, selected: Tensor | None) -> None:
        """Edit only the ``selected`` Gaussians (G,) bool of the original scene (None: all)."""
        if selected is not None and not bool(selected.any()):
            raise ValueError("the edit region holds no Gaussian")
        if selected is None:
            self.masks = self.object_masks
        else:
            self.masks = edit_masks(self.original, self.cameras, selected)
        if float(self.masks.amax()) < 0.5:
            raise ValueError("the edit region is empty in every view (no Gaussian renders there)")
        self.latent_masks = self._latent_masks()

    def groups(self) -> list[tuple[list[int], list[int]]]:
        """(views in the batch, views that take its result): the keyframes, then each context."""
        plan = self.plan
        return [(plan.keyframes, plan.keyframes)] + [(c, c[1:]) for c in plan.contexts]

    def conditions(self, views: list[int], texts: Tensor) -> ViewConditions:
        """The prior's conditions of ``views`` for each prompt embedding of ``texts`` (B, 77, D)."""
        device, cams = self.editing.device, self.cameras.subset(views)
        K, w2c = cams.K[None].to(device), cams.w2c[None].to(device)
        pose = pose_features(K, w2c, cams.image_size_hw)
        many = [x.expand(texts.shape[0], *x.shape[1:]) for x in (K, w2c, pose)]
        empty = self.empty.expand(texts.shape[0], -1, -1)
        return ViewConditions(texts, empty, *many, cams.image_size_hw)

    def branch_predictions(
        self,
        views: list[int],
        x_s: Tensor,
        x_t: Tensor,
        k: int,
        record: AttentionRecord | None = None,
        guidance: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The guided predictions (eps_s, eps_t) of both branches of ``views`` in one call
        (guidance: the config's unless given)."""
        device, rows = self.editing.device, 2 * len(views)
        with torch.no_grad():
            eps, _ = prior_predictions(
                self.editing.model,
                torch.cat([x_s, x_t]),
                torch.full((rows,), int(self.grid[k]), device=device),
                self.conditions(views, self.texts),
                self.config.guidance if guidance is None else guidance,
                control=self.control(k, views, record),
            )
        eps_s, eps_t = eps.to(x_s).chunk(2)
        return eps_s, eps_t

    def blending(self, k: int) -> bool:
        """Whether step k blends the edit with the source outside the edit mask."""
        return self.config.vcac and self.config.fraction(k) >= self.config.blend_from

    def dual_step(self, views: list[int], tgt_in: Tensor, noise: Tensor, k: int) -> Tensor:
        """DDCM: the target's next clean latents (n, C, h, w) of ``views`` from tgt_in."""
        alpha_bar = alpha_bar_at(self.alphas_cumprod, self.grid[k])
        src0 = self.src0[views]
        x_s, x_t = noisy_pair(src0, tgt_in, noise, alpha_bar)
        eps_s, eps_t = self.branch_predictions(views, x_s, x_t, k)
        kappa = value_at(self.config.kappa, k)
        new = ddcm_target(src0, x_s, x_t, eps_s, eps_t, alpha_bar, kappa).to(src0)
        if self.blending(k):
            mask = self.latent_masks[views]
            new = mask * new + (1 - mask) * src0
        return new

    def ddpm_step(self, views: list[int], x_t: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Edit-friendly DDPM: the target's next latents x_{k+1} and clean estimate (n, C, h, w)
        of ``views``, with the source's stored noise z_k; the source branch is its inversion."""
        t = self.grid[k]
        alpha_bar = alpha_bar_at(self.alphas_cumprod, t)
        x_s = self.source_xs[k, views]
        _, eps_t = self.branch_predictions(views, x_s, x_t, k)
        stepped = step_with_noise(self.scheduler, eps_t, t, x_t, self.source_zs[k, views])
        last = k == self.config.steps - 1
        clean = stepped if last else clean_estimate(x_t, eps_t, alpha_bar).to(x_t)
        if self.blending(k):
            mask = self.latent_masks[views]
            stepped = mask * stepped + (1 - mask) * self.source_xs[k + 1, views]
            clean = mask * clean + (1 - mask) * self.src0[views]
        return stepped, clean

    def invert_sources(self) -> tuple[Tensor, Tensor]:
        """The edit-friendly inversion of the original renders, batch by batch as the edit runs
        them: xs (steps + 1, V, C, h, w) and zs (steps, V, C, h, w)."""
        steps = self.config.steps
        xs = torch.zeros((steps + 1, *self.src0.shape), dtype=self.src0.dtype)
        zs = torch.zeros((steps, *self.src0.shape), dtype=self.src0.dtype)
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        steps_of = {int(t): k for k, t in enumerate(self.grid)}
        for group, updated in self.groups():
            # The source rows of the very calls the edit makes (target = source here), so that an
            # edit with the source prompt retraces the inversion to the bit.
            def denoise(latents: Tensor, timesteps: Tensor, group=group) -> Tensor:
                k = steps_of[int(timesteps[0])]
                guidance = self.config.source_guidance
                return self.branch_predictions(group, latents, latents, k, guidance=guidance)[0]

            with torch.no_grad():
                inversion = invert(denoise, self.scheduler, self.src0[group], steps, generator)
            keep = [group.index(v) for v in updated]
            xs[:, updated] = inversion.xs[:, keep].cpu()
            zs[:, updated] = inversion.zs[:, keep].cpu()
        return xs.to(self.src0.device), zs.to(self.src0.device)

    def edit_2d(self, k: int, z_render: Tensor | None) -> None:
        """Step k of the 2D trajectory for every view: keyframes, then contexts."""
        f = value_at(self.config.f, k)
        alpha_bar = alpha_bar_at(self.alphas_cumprod, self.grid[k])
        noise = torch.randn(self.src0.shape, generator=self.generator).to(self.src0)
        for group, updated in self.groups():
            keep = [group.index(v) for v in updated]
            if self.config.sampler == "ddcm":
                tgt_in = self.tgt0[group]
                if z_render is not None:
                    tgt_in = anchor(tgt_in, z_render[group], f)
                self.tgt0[updated] = self.dual_step(group, tgt_in, noise[group], k)[keep]
                continue
            x_t = self.x_tgt[group]
            if z_render is not None:  # move x_t by what anchoring moves its clean estimate
                shift = anchor(self.tgt0[group], z_render[group], f) - self.tgt0[group]
                x_t = x_t + alpha_bar.sqrt().to(x_t) * shift
            stepped, clean = self.ddpm_step(group, x_t, k)
            self.x_tgt[updated], self.tgt0[updated] = stepped[keep], clean[keep]

    # The 3D part.

    def update_3d(self, count: int, k: int) -> float:
        """``count`` GaussianFitter steps toward the pseudo ground truth; the mean loss."""
        if count == 0:
            return 0.0
        height, width = self.cameras.image_size_hw
        fitter, config = self.fitter, self.config
        # Inside the edit mask the pseudo ground truth, outside it the original render.
        targets = self.masks * self.pseudo + (1 - self.masks) * self.original_renders
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
        report = StepReport(k, int(self.grid[k]), value_at(config.kappa, k),
                            value_at(config.f, k), count, loss,
                            time.perf_counter() - started)  # fmt: skip
        self.reports.append(report)
        return report

    def scene(self) -> GaussianScene:
        """The edited scene so far (detached)."""
        return self.fitter.scene.detach()

    # Checkpoints: the scene as PLY, tensors as safetensors, the rest as JSON.

    def save(self, folder: Path) -> Path:
        """Write a resumable checkpoint into ``folder`` (replaced whole); returns it."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        write_gaussian_ply(tmp / SCENE_FILE, self.scene())
        tensors = {"tgt0": self.tgt0, "generator": self.generator.get_state()}
        if self.config.sampler == "ddpm":
            tensors["x_tgt"] = self.x_tgt
        if self.pseudo is not None:
            tensors["pseudo"] = self.pseudo
        fitter_tensors, fitter_state = self.fitter.checkpoint_state()
        tensors |= fitter_tensors
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  tmp / TENSORS_FILE)  # fmt: skip
        state = {
            "format": STATE_FORMAT,
            "position": self.position,
            "source_prompt": self.source_prompt,
            "prompt": self.prompt,
            "fitter": fitter_state,
            "reports": [dataclasses.asdict(r) for r in self.reports],
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        if folder.exists():
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
        tmp.replace(folder)
        return folder

    def load(self, folder: Path) -> None:
        """Continue from a checkpoint of ``save`` made with the same inputs."""
        folder = Path(folder)
        missing = [n for n in (SCENE_FILE, TENSORS_FILE, STATE_FILE) if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{folder} is not a TrAME checkpoint: missing {', '.join(missing)}")
        try:
            state = json.loads((folder / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{folder / STATE_FILE}: cannot read: {error}") from None
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{folder / STATE_FILE}: not a {STATE_FORMAT} file")
        if (state["source_prompt"], state["prompt"]) != (self.source_prompt, self.prompt):
            raise ValueError(f"{folder}: a checkpoint of another edit ({state['prompt']!r})")
        device = self.editing.device
        scene = read_gaussian_ply(folder / SCENE_FILE, device=device)
        scene = scene.with_sh_degree(self.config.fit.sh_degree)
        tensors = load_file(folder / TENSORS_FILE, device=str(device))
        fitter = GaussianFitter(scene, None, self.config.fit, extent=self.fitter.extent)
        fitter.restore_checkpoint_state(tensors, state["fitter"])
        self.fitter = fitter
        self.tgt0 = tensors["tgt0"].to(self.src0).contiguous()
        self.pseudo = tensors.get("pseudo")
        if self.config.sampler == "ddpm":
            self.x_tgt = tensors["x_tgt"].to(self.src0).contiguous()
        self.generator.set_state(tensors["generator"].cpu())
        self.position = int(state["position"])
        self.reports = [StepReport(**r) for r in state["reports"]]
