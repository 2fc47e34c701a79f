"""The ``sds:`` section of the config tree: how ``infer.py sds`` distils a 3D Gaussian scene.

Kept apart from the other sections so that ``viewdiff.config`` can include it without importing
the SDS machinery; the scene's optimisation nests 3DGS's ``FitConfig`` (``sds.fit``), as TrAME's
config does. ``SdsConfig.check`` is the section's one value check.

Guidance is the standard w of ``uncond + w (cond - uncond)`` everywhere in the project;
threestudio's ``guidance_scale`` s is w = s + 1 (its formula is ``cond + s (cond - uncond)``),
so DreamFusion's 100 is w = 100 here and s = 99 there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from viewdiff.scene.fit import FitConfig
from viewdiff.scene.render import BACKENDS
from viewdiff.strict_config import ConfigError, check_ranges

SDS_FIT = FitConfig(
    sh_degree=0,  # no view-dependent colour, which SDS would exploit
    background=(0.5, 0.5, 0.5),
    # threestudio's Gaussian recipes (GaussianDreamer); 3DGS's own values for the rest.
    position_lr_init=1e-3,
    position_lr_final=2e-5,
    feature_lr=1e-2,
    opacity_lr=5e-2,
    densify_until=3000,
    opacity_reset_interval=100_000,  # never, as GaussianDreamer
    max_gaussians=20_000,
)
"""``sds.fit``'s defaults: 3DGS's ``FitConfig`` with SDS's learning rates and density control."""

RUN_FIT_KEYS = {"iterations": "sds.steps", "seed": "sds.seed",
                "sh_increase_interval": "sds.steps (the bands spread over the run)",
                "lambda_dssim": "sds.image_ssim_weight (image-to-3D's SSIM term)"}  # fmt: skip
"""Keys of ``sds.fit`` that SDS does not read there (``fitter_config`` sets the first three
from the run), with the key to set instead."""

FLAT_FIT_KEYS = ("sh_degree", "position_lr_init", "position_lr_final", "feature_lr",
                 "opacity_lr", "scaling_lr", "rotation_lr", "densify_from", "densify_until",
                 "densify_interval", "densify_grad_threshold", "opacity_reset_interval",
                 "min_opacity", "max_gaussians", "background")  # fmt: skip
"""Keys that configs saved before the ``fit:`` section held directly under ``sds:``."""

LEARNING_RATES = ("position_lr_init", "position_lr_final", "feature_lr", "opacity_lr",
                  "scaling_lr", "rotation_lr")  # fmt: skip
"""The scene's learning rates in ``sds.fit`` (``infer.py sds --lr`` scales them all)."""


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

    fit: FitConfig = SDS_FIT
    """The scene's optimisation (``GaussianFitter``): learning rates, density control, SH
    degree, background (the start of the learned one, if learned). Its iterations, seed and
    sh_increase_interval are the run's (sds.steps, sds.seed, the SH bands switched on evenly
    over the steps) and lambda_dssim is unused: setting them is an error."""

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

    def check(self) -> None:
        """Refuse values that cannot run, naming the key (the one check of the sds: section)."""
        check_ranges(self, "sds.", {"steps": "positive", "batch_size": "positive",
                                    "num_gaussians": "positive", "guidance_scale": "positive",
                                    "init_radius": "positive"})  # fmt: skip
        if self.views < 0 or self.views == 1 or self.image_size < 0 or self.image_size % 8:
            raise ConfigError(
                f"sds.views ({self.views}) must be 0 (the export's) or >= 2 and sds.image_size "
                f"({self.image_size}) 0 or a multiple of 8"
            )
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise ConfigError(f"sds.t_min, sds.t_max must be 0 <= min <= max <= 1, got "
                              f"{self.t_min}, {self.t_max}")  # fmt: skip
        for key in ("t_min_anneal", "t_max_anneal"):
            if len(getattr(self, key)) not in (0, 4):
                raise ConfigError(f"sds.{key} must be [start_step, start, end, end_step] or "
                                  f"empty, got {list(getattr(self, key))}")  # fmt: skip
        for key in ("elevation_deg", "radius", "fov_deg"):
            value = getattr(self, key)
            if value and (len(value) != 2 or not value[0] <= value[1]):
                raise ConfigError(f"sds.{key} must be [low, high] with low <= high or empty, "
                                  f"got {list(value)}")  # fmt: skip
        self._check_fit()

    def _check_fit(self) -> None:
        """The scene optimisation's values (``sds.fit``)."""
        fit = self.fit
        for key, source in RUN_FIT_KEYS.items():
            if getattr(fit, key) != getattr(SDS_FIT, key):
                raise ConfigError(f"sds.fit.{key} is not read by SDS: set {source} instead "
                                  f"(got {getattr(fit, key)})")  # fmt: skip
        background = fit.background
        if len(background) != 3 or not all(0.0 <= c <= 1.0 for c in background):
            raise ConfigError(f"sds.fit.background must be 3 values in [0, 1], got {background}")
        if not 0 <= fit.sh_degree <= 3:
            raise ConfigError(f"sds.fit.sh_degree must be 0..3, got {fit.sh_degree}")
        check_ranges(fit, "sds.fit.", dict.fromkeys(LEARNING_RATES, "finite and >= 0"))
        check_ranges(fit, "sds.fit.", {"densify_interval": "at least 1"})
        if fit.backend not in BACKENDS:
            raise ConfigError(f"sds.fit.backend must be one of {', '.join(BACKENDS)}, "
                              f"got {fit.backend!r}")  # fmt: skip


def fitter_config(config: SdsConfig) -> FitConfig:
    """The fitter's settings of a run: ``sds.fit`` for ``sds.steps`` steps, seeded by
    ``sds.seed``, its SH bands switched on evenly over the steps."""
    interval = max(config.steps // (config.fit.sh_degree + 1), 1)
    return dataclasses.replace(
        config.fit, iterations=config.steps, seed=config.seed, sh_increase_interval=interval
    )


def nest_flat_fit_keys(section: dict[str, Any]) -> dict[str, Any]:
    """An ``sds:`` section saved before the ``fit:`` section with its ``FLAT_FIT_KEYS`` moved
    into ``fit:`` (a current section comes back unchanged)."""
    moved = {key: section[key] for key in FLAT_FIT_KEYS if key in section}
    if not moved or not isinstance(section.get("fit", {}), dict):
        return section
    rest = {key: value for key, value in section.items() if key not in moved}
    return {**rest, "fit": {**moved, **section.get("fit", {})}}
