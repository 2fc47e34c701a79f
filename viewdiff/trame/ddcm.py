"""TrAME's dual-branch step: DDCM's virtual inversion (InfEdit, Xu et al. 2024; TrAME Sec. 3.2).

A source branch (the clean latents ``src0`` of the original views, the source prompt) and a target
branch (``tgt0``, the target prompt) share one noise ``n`` at every step:

    x_s = sqrt(abar_t) src0 + sqrt(1 - abar_t) n,      x_t = sqrt(abar_t) tgt0 + sqrt(1 - abar_t) n.

The model's one-step clean estimates ("consistency" predictions) of both,
``cons = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, give DDCM's target estimate

    tgt0_next = tgt_cons + kappa (src0 - src_cons)

which with kappa = 1 is InfEdit's ``x0 + ((x_t - x_s) - sqrt(1 - abar_t)(eps_t - eps_s)) /
sqrt(abar_t)``: the source branch's own reconstruction error is handed to the target (virtual
inversion, no inversion pass). TrAME's consistency correction weighs it by kappa_k. The next step
draws fresh noise (DDCM at eta = 1), so the state between steps is just ``tgt0``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def noisy_pair(
    src0: Tensor, tgt0: Tensor, noise: Tensor, alpha_bar: Tensor
) -> tuple[Tensor, Tensor]:
    """(x_s, x_t): both branches noised to the same abar with the same noise (R, C, h, w)."""
    a = alpha_bar.to(src0)
    return a.sqrt() * src0 + (1 - a).sqrt() * noise, a.sqrt() * tgt0 + (1 - a).sqrt() * noise


def clean_estimate(x: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """The one-step estimate of x0: (x - sqrt(1 - abar) eps) / sqrt(abar)."""
    a = alpha_bar.to(x)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def ddcm_target(
    src0: Tensor,
    x_s: Tensor,
    x_t: Tensor,
    eps_s: Tensor,
    eps_t: Tensor,
    alpha_bar: Tensor,
    kappa: float = 1.0,
) -> Tensor:
    """The target branch's next clean latents tgt_cons + kappa (src0 - src_cons) (R, C, h, w)."""
    src_cons = clean_estimate(x_s, eps_s, alpha_bar)
    tgt_cons = clean_estimate(x_t, eps_t, alpha_bar)
    return tgt_cons + kappa * (src0 - src_cons)


def anchor(tgt0: Tensor, z_render: Tensor, f: float) -> Tensor:
    """TAS's error compensation: z_render - f (z_render - tgt0); f = 1 keeps tgt0, f = 0 takes
    the render's latents (written as f tgt0 + (1 - f) z_render: exact at both ends)."""
    return f * tgt0 + (1 - f) * z_render


def alpha_bar_at(alphas_cumprod: Tensor, t: Tensor | int) -> Tensor:
    """abar_t as a 0-d float64 tensor."""
    return torch.as_tensor(alphas_cumprod)[int(t)].double()
