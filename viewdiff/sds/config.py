"""The ``sds:`` section of the config tree: how ``infer.py sds`` distils a 3D Gaussian scene.

Kept apart from the other sections so that ``viewdiff.config`` can include it without importing
the SDS machinery. Guidance is the standard w of ``uncond + w (cond - uncond)`` everywhere in
the project; threestudio's ``guidance_scale`` s is w = s + 1 (its formula is
``cond + s (cond - uncond)``), so DreamFusion's 100 is w = 100 here and s = 99 there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SdsConfig:
    """Score distillation of a 3D Gaussian scene with the multi-view prior (infer.py sds)."""

    steps: int = 10_000
    """Optimisation steps (DreamFusion: 15k; threestudio's SD recipes: 10k)."""

    views: int = 0
    """N: views rendered per camera group and scored jointly (0: the export's data.n_views)."""

    batch_size: int = 1
    """Camera groups per step, each with its own t (the prior's B objects)."""

    image_size: int = 0
    """Square render side, a multiple of 8 (0: the export's data.image_size)."""

    guidance_scale: float = 100.0
    """CFG w of uncond + w (cond - uncond); DreamFusion: 100 (threestudio's s = w - 1)."""

    weighting: Literal["sds", "uniform", "fantasia3d"] = "sds"
    """w(t): 1 - alpha_bar (DreamFusion), 1, or sqrt(alpha_bar) (1 - alpha_bar) (Fantasia3D)."""

    mode: Literal["sds", "recon"] = "sds"
    """Loss: the SDS gradient, or MVDream's x0 reconstruction (loss to the predicted x0)."""

    target_space: Literal["latent", "image"] = "latent"
    """Where the loss is taken: on the latents through the VAE encoder (DreamFusion for latent
    models, threestudio), or on the renders against the decoded target D(z - grad) (no encoder
    Jacobian; HiFA's image-space loss), for VAEs whose encoder gradient is noise."""

    recon_std_rescale: float = 0.5
    """recon mode: blend towards the guided x0 rescaled to the conditional x0's std (MVDream)."""

    schedule: Literal["random", "dreamtime"] = "random"
    """t per group: uniform in [t_min, t_max] at the step, or DreamTime's descending schedule."""

    t_min: float = 0.02
    """Smallest t as a fraction of the training timesteps (DreamFusion / threestudio: 0.02)."""

    t_max: float = 0.98
    """Largest t as a fraction of the training timesteps (0.98)."""

    t_min_anneal: tuple[float, ...] = ()
    """threestudio's [start_step, start, end, end_step] for t_min (empty: constant t_min)."""

    t_max_anneal: tuple[float, ...] = ()
    """threestudio's [start_step, start, end, end_step] for t_max (empty: constant t_max)."""

    grad_clip: float = 0.0
    """Clip every element of the latent gradient to [-c, c] (0: no clipping)."""

    seed: int = 0
    """Seed of the initial scene, the cameras, the timesteps and the noise."""

    num_gaussians: int = 4096
    """Gaussians of the initial scene (uniform in a ball, random colours)."""

    init_radius: float = 0.6
    """Radius of that ball in the normalised scene (the object box is [-1, 1]^3)."""

    init_opacity: float = 0.1
    """Opacity of the initial Gaussians (3DGS: 0.1)."""

    sh_degree: int = 0
    """SH degree of the colours (0: no view-dependent colour, which SDS would exploit)."""

    position_lr_init: float = 1e-3
    """Learning rate of the means at step 0, times the scene extent; decays exponentially."""

    position_lr_final: float = 2e-5
    """... at the last step."""

    feature_lr: float = 1e-2
    """Learning rate of the colours (SH DC; higher bands 1/20 of it)."""

    opacity_lr: float = 5e-2
    """Learning rate of the opacity logits."""

    scaling_lr: float = 5e-3
    """Learning rate of the log-scales."""

    rotation_lr: float = 1e-3
    """Learning rate of the quaternions."""

    densify_from: int = 100
    """First step of density control (clone / split / prune on the SDS gradients)."""

    densify_until: int = 3000
    """Last step of density control."""

    densify_interval: int = 100
    """Steps between density-control passes."""

    densify_grad_threshold: float = 2e-4
    """Mean view-space gradient norm (NDC units) above which a Gaussian is cloned or split."""

    opacity_reset_interval: int = 100_000
    """Steps between opacity resets while densifying (large: never, as GaussianDreamer)."""

    min_opacity: float = 0.005
    """Gaussians more transparent than this are pruned at density control."""

    max_gaussians: int = 20_000
    """Cap on the number of Gaussians."""

    background: tuple[float, ...] = (0.5, 0.5, 0.5)
    """RGB in [0, 1] behind the scene (the start of the learned background, if learned)."""

    learn_background: bool = False
    """Optimise one constant background colour with the scene."""

    background_lr: float = 1e-2
    """Learning rate of the learned background colour (a sigmoid's logits)."""

    elevation_deg: tuple[float, ...] = ()
    """[low, high] elevation of camera groups (empty: the export's training cameras)."""

    radius: tuple[float, ...] = ()
    """[low, high] camera distance to the box centre (empty: the export's training cameras)."""

    fov_deg: tuple[float, ...] = ()
    """[low, high] horizontal field of view (empty: the export's training cameras)."""

    image_loss_weight: float = 1000.0
    """Image-to-3D: weight of the L2 loss of the given view's render (threestudio: 1000)."""

    image_ssim_weight: float = 0.0
    """Image-to-3D: weight of its 1 - SSIM loss."""

    eval_every: int = 200
    """Steps between render grids and guidance-eval pictures (0: never)."""

    checkpoint_every: int = 500
    """Steps between resumable checkpoints of scene and optimiser (0: only at the end)."""

    turntable_views: int = 24
    """Frames of the final turntable."""
