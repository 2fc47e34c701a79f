"""Edit-friendly DDPM noise-space inversion (Huberman-Spiegelglas, Kulikov & Michaeli, CVPR 2024).

For clean latents x0 and the decreasing grid t_N > ... > t_1 of a DDIM scheduler run with
eta = 1 (DDPM's posterior on the sub-grid):

1. draw x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps_k with an *independent* eps_k for every k
   (Eq. 6; unlike DDPM's forward chain, the x_k are not linked to each other), and x_0 = x0;
2. for k = N..1: the model's mean mu_k(x_k) (with the source prompt and its guidance) and sigma_k,
   z_k = (x_{k-1} - mu_k) / sigma_k (Eq. 7), and x_{k-1} is replaced by diffusers' own step
   ``step(..., eta=1, variance_noise=z_k)`` of x_k, which is mu_k + sigma_k z_k up to rounding:
   the paper's correction, so that generation with the stored z retraces the x_k exactly.

Generation: x_{k-1} = step(model(x_k; target prompt, guidance), z_k), from x_{N - T_skip}
(skipping the T_skip noisiest steps keeps more of the input's structure). With the source prompt
and guidance it returns x0 to rounding. z_1 is kept: the official code zeroes it after inverting,
which makes its reconstruction inexact.

Rows are latents (R, C, h, w) of B objects x N views (or single images); ``Denoiser`` is the
model call, with its prompt, cameras and guidance bound (``viewdiff.editing.editing_model``). Rows
marked ``known`` (views given clean, as in sampling) stay x0 at every k with z = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from torch import Tensor
from tqdm.auto import tqdm

# (latents (R, C, h, w) at the timesteps, timesteps (R,)) -> the guided model output (R, C, h, w)
Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Inversion:
    """The edit-friendly noise space of some latents on a grid."""

    timesteps: Tensor  # (N,) t_N > ... > t_1, long
    xs: Tensor  # (N + 1, R, C, h, w): xs[i] at timesteps[i], xs[N] = x0
    zs: Tensor  # (N, R, C, h, w): zs[i] takes xs[i] to xs[i + 1]
    known: Tensor  # (R,) bool, rows given clean

    @property
    def num_steps(self) -> int:
        """N."""
        return self.timesteps.shape[0]


def ddpm_grid(scheduler: DDIMScheduler, num_steps: int) -> Tensor:
    """The scheduler's decreasing timesteps (N,) for ``num_steps`` steps (set on it)."""
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.clone()


def mean_and_sigma(
    scheduler: DDIMScheduler, model_output: Tensor, t: Tensor, sample: Tensor
) -> tuple[Tensor, Tensor]:
    """DDPM's posterior mean mu_k (R, C, h, w) and std sigma_k (scalar) of one step at eta = 1,
    as diffusers computes them: the step without noise, and the square root of its variance."""
    mean = scheduler.step(model_output, t, sample, eta=1.0, variance_noise=torch.zeros_like(sample))
    previous = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    sigma = scheduler._get_variance(t, previous) ** 0.5  # diffusers' sigma_t(eta=1)
    return mean.prev_sample, sigma.to(sample)


def step_with_noise(
    scheduler: DDIMScheduler, model_output: Tensor, t: Tensor, sample: Tensor, z: Tensor
) -> Tensor:
    """x_{k-1} = mu_k + sigma_k z_k: diffusers' DDIM step at eta = 1 with the given noise."""
    return scheduler.step(model_output, t, sample, eta=1.0, variance_noise=z).prev_sample


def invert(
    denoise: Denoiser,
    scheduler: DDIMScheduler,
    x0: Tensor,
    num_steps: int,
    generator: torch.Generator,
    known: Tensor | None = None,
    show_progress: bool = False,
) -> Inversion:
    """The edit-friendly inversion of latents x0 (R, C, h, w) on ``num_steps`` steps."""
    rows = x0.shape[0]
    known = torch.zeros(rows, dtype=torch.bool) if known is None else known.cpu()
    given = known.to(x0.device)[:, None, None, None]
    timesteps = ddpm_grid(scheduler, num_steps)
    # Eq. 6: every x_k from x0 with its own noise (drawn on the CPU: a seed means one thing).
    eps = torch.randn((num_steps, *x0.shape), generator=generator, dtype=x0.dtype).to(x0.device)
    xs = torch.stack(
        [scheduler.add_noise(x0, eps[i], t.repeat(rows)) for i, t in enumerate(timesteps)] + [x0]
    )
    xs = torch.where(given, x0, xs)
    zs = torch.zeros((num_steps, *x0.shape), dtype=x0.dtype, device=x0.device)
    for i, t in enumerate(tqdm(timesteps, desc="invert", disable=not show_progress, leave=False)):
        output = denoise(xs[i], _row_timesteps(t, known))
        mean, sigma = mean_and_sigma(scheduler, output, t, xs[i])
        z = torch.where(given, torch.zeros_like(mean), (xs[i + 1] - mean) / sigma)  # Eq. 7
        zs[i] = z
        if i + 1 < num_steps:  # the correction; x0 itself stays (rounding only there)
            xs[i + 1] = torch.where(given, x0, step_with_noise(scheduler, output, t, xs[i], z))
    return Inversion(timesteps, xs, zs, known)


def generate(
    denoise: Denoiser,
    scheduler: DDIMScheduler,
    inversion: Inversion,
    skip: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Latents x0 (R, C, h, w) regenerated with the stored noise from x_{N - skip}."""
    if not 0 <= skip < inversion.num_steps:
        raise ValueError(f"skip must be in [0, {inversion.num_steps}), got {skip}")
    scheduler.set_timesteps(inversion.num_steps)
    if not torch.equal(scheduler.timesteps.cpu(), inversion.timesteps.cpu()):
        raise ValueError("the scheduler's grid differs from the inversion's")
    given = inversion.known.to(inversion.xs.device)[:, None, None, None]
    x0 = inversion.xs[-1]
    latents = inversion.xs[skip]
    steps = list(enumerate(inversion.timesteps))[skip:]
    for i, t in tqdm(steps, desc="edit", disable=not show_progress, leave=False):
        output = denoise(latents, _row_timesteps(t, inversion.known))
        latents = torch.where(
            given, x0, step_with_noise(scheduler, output, t, latents, inversion.zs[i])
        )
    return latents


def _row_timesteps(t: Tensor, known: Tensor) -> Tensor:
    """t for every row, 0 for rows given clean (R,)."""
    return torch.where(known, 0, t.cpu()).long()
