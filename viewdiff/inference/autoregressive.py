"""Generate views for every camera of a trajectory: one joint batch, or a sliding window of them.

``generate_views`` is the one loop behind text-to-views, image-to-views and evaluation. It
follows the plan of ``viewdiff.inference.windows``: each window denoises its new views jointly
with the views it is given clean (input images, already generated views) at t = 0; the new views'
latents join the pool that later windows draw their conditions from. A trajectory that fits in
one window is one batch; a 100+ view turntable is the reference's autoregressive generation.

Following the reference's test script:

- guidance: ``sample.guidance_scale`` for windows that see no view, ``image_guidance_scale``
  (the reference's 1.0) for windows with given views;
- noise: every window starts from the same seeded noise (the reference re-seeds every window),
  object b from its own seed, so that an object's views do not depend on its batch;
- intensity stats (the pose features' last two entries): zeros for every view, as the reference
  at test time (``sample.intensity_stats=zero``); with ``known``, given views carry their own
  stats and new views the mean of theirs (training fed every view its own stats).

Generated views are kept as latents for later windows (no decode/encode round trip); they are
decoded once, when their window is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from viewdiff.cameras.pose_features import intensity_stats
from viewdiff.config import SampleConfig
from viewdiff.inference.trajectory import Trajectory, concat_trajectories
from viewdiff.inference.windows import Window, plan_windows
from viewdiff.model.multiview_unet import VAE_SCALE_FACTOR
from viewdiff.prior.call import ViewConditions, decode_latents, encode_images, encode_prompts
from viewdiff.prior.load import PriorModels
from viewdiff.sampling import denoise_views, inference_scheduler, initial_noise


def check_sample_config(sample: SampleConfig) -> None:
    """Refuse sampler settings that cannot run, naming the key (``SampleConfig.check``: the
    same check as a preset's or an override's, for settings a command's flags changed)."""
    sample.check()


@dataclass
class ViewPool:
    """Latents, images and intensity stats of B objects x (M given + V trajectory) views."""

    latents: Tensor  # (B, M+V, C, h, w), CPU float32
    images: Tensor  # (B, M+V, 3, H, W) in [-1, 1], CPU
    stats: Tensor  # (B, M+V, 2)
    cameras: Trajectory  # M+V cameras


def _empty_pool(
    prior: PriorModels, n_objects: int, cameras: Trajectory, given_images: Tensor | None
) -> ViewPool:
    """A pool with the given views (encoded, the VAE posterior's mean) and room for the rest."""
    (height, width), n_views = cameras.image_size_hw, len(cameras)
    latent_hw = (height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR)
    pool = ViewPool(
        latents=torch.zeros(n_objects, n_views, prior.vae.config.latent_channels, *latent_hw),
        images=torch.zeros(n_objects, n_views, 3, height, width),
        stats=torch.zeros(n_objects, n_views, 2),
        cameras=cameras,
    )
    if given_images is not None:
        n_given = given_images.shape[0]
        given = encode_images(prior.vae, given_images[None], sample=False).float().cpu()
        pool.latents[:, :n_given] = given.reshape(1, n_given, *pool.latents.shape[2:])
        pool.images[:, :n_given] = given_images.float()
        pool.stats[:, :n_given] = intensity_stats(given_images.float())
    return pool


def _window_stats(pool: ViewPool, window: Window, mode: str) -> Tensor | None:
    """Intensity stats (B, n, 2) of a window's views (conditions first), or None for zeros."""
    if mode == "zero" or not window.conditions:
        return None
    known = pool.stats[:, list(window.conditions)]  # (B, c, 2)
    new = known.mean(dim=1, keepdim=True).expand(-1, len(window.targets), -1)
    return torch.cat([known, new], dim=1)


def _window_inputs(
    pool: ViewPool,
    window: Window,
    text: tuple[Tensor, Tensor | None],
    mode: str,
    device: torch.device,
) -> tuple[ViewConditions, Tensor, Tensor]:
    """A window's conditions, (B, n) mask of given views and (B, n, C, h, w) clean latents.

    The window's views are its conditions first, then its targets.
    """
    n_objects, n_known = pool.latents.shape[0], len(window.conditions)
    order = [*window.conditions, *window.targets]
    cameras = pool.cameras.subset(order)
    stats = _window_stats(pool, window, mode)
    pose = cameras.pose_features(None if stats is None else stats.double())  # (B | 1, n, 10)
    conditions = ViewConditions(
        text=text[0],
        empty_text=text[1],
        K=cameras.K.expand(n_objects, -1, -1, -1).to(device),
        w2c=cameras.w2c.expand(n_objects, -1, -1, -1).to(device),
        pose=pose.expand(n_objects, len(order), -1).to(device),
        image_size_hw=cameras.image_size_hw,
    )
    known = torch.zeros(n_objects, len(order), dtype=torch.bool)
    known[:, :n_known] = True
    clean = torch.zeros(n_objects, len(order), *pool.latents.shape[2:])
    clean[:, :n_known] = pool.latents[:, list(window.conditions)]
    return conditions, known, clean


def _run_window(
    prior: PriorModels,
    pool: ViewPool,
    window: Window,
    text: tuple[Tensor, Tensor | None],
    sample: SampleConfig,
    seeds: Sequence[int],
    show_progress: bool,
) -> None:
    """Denoise one window's new views and put them (latents, images, stats) into the pool."""
    conditions, known, clean = _window_inputs(
        pool, window, text, sample.intensity_stats, prior.device
    )
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]  # re-seeded per window
    n_known = len(window.conditions)
    latents = denoise_views(
        prior.model,
        inference_scheduler(sample.scheduler, prior.scheduler_config),
        initial_noise(tuple(clean.shape), generators),
        conditions,
        sample.num_inference_steps,
        sample.image_guidance_scale if n_known else sample.guidance_scale,
        generators,
        known,
        clean,
        show_progress,
    )
    new = latents[:, n_known:].float().cpu()  # (B, new, C, h, w)
    images = decode_latents(prior.vae, new.flatten(0, 1)).cpu()
    images = images.reshape(*new.shape[:2], *images.shape[1:])  # (B, new, 3, H, W)
    targets = list(window.targets)
    pool.latents[:, targets], pool.images[:, targets] = new, images
    pool.stats[:, targets] = intensity_stats(images)


def generate_views(
    prior: PriorModels,
    prompts: Sequence[str],
    trajectory: Trajectory,
    sample: SampleConfig,
    seeds: Sequence[int],
    given_images: Tensor | None = None,
    given_cameras: Trajectory | None = None,
    show_progress: bool = True,
) -> Tensor:
    """Images (B, V, 3, H, W) in [-1, 1] of B prompts, one per camera of ``trajectory``.

    ``given_images`` (M, 3, H, W) seen by ``given_cameras`` are given to every object; ``seeds``
    has one seed per prompt.
    """
    check_sample_config(sample)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    if (given_images is None) != (given_cameras is None):
        raise ValueError("given images need their cameras, and cameras their images")
    n_given = 0 if given_cameras is None else len(given_cameras)
    if given_images is not None and given_images.shape[0] != n_given:
        raise ValueError(f"{given_images.shape[0]} given images, {n_given} cameras")
    cameras = (
        trajectory if given_cameras is None else concat_trajectories(given_cameras, trajectory)
    )
    windows = plan_windows(
        trajectory.w2c,
        None if given_cameras is None else given_cameras.w2c,
        sample.window_views,
        sample.max_conditions,
    )
    pool = _empty_pool(prior, len(prompts), cameras, given_images)
    text = encode_prompts(prior.text_encoder, prior.tokenizer, prompts)
    empty = encode_prompts(prior.text_encoder, prior.tokenizer, [""] * len(prompts))
    bar = tqdm(windows, desc=f"{len(trajectory)} views", unit="window", disable=not show_progress)
    for window in bar:
        _run_window(prior, pool, window, (text, empty), sample, seeds, show_progress)
    return pool.images[:, n_given:]
