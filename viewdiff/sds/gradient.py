"""The score distillation gradient as pure functions (DreamFusion, Poole et al. 2023, Eq. 3).

For latents z of rendered views, t and eps: z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps, the
prior's guided noise prediction eps_hat(z_t; y, t, cameras), and

    grad = w(t) (eps_hat - eps),    loss = 0.5 ||z - sg(z - grad)||^2 / B,

so that d loss / d z = grad / B exactly while the UNet Jacobian is skipped (the point of SDS).
``image_target_loss`` takes the same step in image space, against the decoded D(z - grad), for
VAEs whose encoder Jacobian turns a smooth latent step into pixel noise (the toy VAE's does).
B counts objects (camera groups); all N views of a group share one t, as in training. The
weightings are threestudio's: ``sds`` 1 - abar (DreamFusion), ``uniform`` 1, ``fantasia3d``
sqrt(abar) (1 - abar). The second mode is MVDream's x0 reconstruction (Shi et al. 2024,
Sec. 3.2): the loss pulls z to the guided x0 prediction, whose std is rescaled towards the
conditional one's to tame saturation at high guidance.

Guidance is ``uncond + w (cond - uncond)`` (``viewdiff.prior.call.guided_prediction``):
threestudio's ``guidance_scale`` s is w = s + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from viewdiff.prior.call import ViewConditions, prior_predictions
from viewdiff.sds.config import SdsConfig

WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def sds_weight(alphas_cumprod: Tensor, weighting: str) -> Tensor:
    """w(t) of ``weighting`` for alpha_bar values (any shape)."""
    if weighting == "sds":
        return 1.0 - alphas_cumprod
    if weighting == "uniform":
        return torch.ones_like(alphas_cumprod)
    if weighting == "fantasia3d":
        return alphas_cumprod.sqrt() * (1.0 - alphas_cumprod)
    raise ValueError(f"unknown SDS weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")


def epsilon_from_prediction(
    prediction: Tensor, noisy: Tensor, alphas_cumprod: Tensor, prediction_type: str
) -> Tensor:
    """The noise eps implied by a prediction of ``prediction_type`` at z_t = ``noisy``.

    ``alphas_cumprod`` broadcasts against the latents (B*N, 1, 1, 1). v = sqrt(abar) eps -
    sqrt(1 - abar) x0 (Salimans & Ho 2022) gives eps = sqrt(abar) v + sqrt(1 - abar) z_t.
    """
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "v_prediction":
        return alphas_cumprod.sqrt() * prediction + (1.0 - alphas_cumprod).sqrt() * noisy
    raise ValueError(f"SDS needs an epsilon or v prediction, not {prediction_type!r}")


def x0_from_epsilon(noisy: Tensor, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The clean latents z_0 = (z_t - sqrt(1 - abar) eps) / sqrt(abar) (DDPM Eq. 15)."""
    return (noisy - (1.0 - alphas_cumprod).sqrt() * eps) / alphas_cumprod.sqrt()


def sds_gradient(eps_hat: Tensor, eps: Tensor, weight: Tensor, grad_clip: float = 0.0) -> Tensor:
    """w(t) (eps_hat - eps), NaNs zeroed, clipped elementwise to [-c, c] when c > 0."""
    grad = torch.nan_to_num(weight * (eps_hat - eps))
    if grad_clip > 0:
        grad = grad.clamp(-grad_clip, grad_clip)
    return grad


class _ScoreDistillationLoss(torch.autograd.Function):
    """0.5 ||grad||^2 / B forward, grad / B backward: the SDS loss with an exact gradient."""

    @staticmethod
    def forward(ctx, latents: Tensor, grad: Tensor, n_objects: int) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(grad)
        ctx.n_objects = n_objects
        return 0.5 * grad.square().sum() / n_objects

    @staticmethod
    def backward(ctx, upstream: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return grad / ctx.n_objects * upstream, None, None


def sds_loss(latents: Tensor, grad: Tensor, n_objects: int) -> Tensor:
    """0.5 ||z - sg(z - grad)||^2 / B: a scalar whose gradient w.r.t. z is exactly grad / B.

    Written as ``0.5 * mse(z, (z - grad).detach())`` (threestudio) the gradient would be
    z - (z - grad), which rounds; the value here is the same, 0.5 ||grad||^2 / B.
    """
    return _ScoreDistillationLoss.apply(latents, grad.detach(), n_objects)


def image_target_loss(images: Tensor, targets: Tensor, known: Tensor, n_objects: int) -> Tensor:
    """0.5 ||x - sg(target)||^2 / B over the renders (B*N, 3, H, W) of views not ``known``.

    With targets D(z - grad) (decoded latent targets) this is the SDS step taken in image space:
    the pixels move towards what the latents would have moved to, without the encoder Jacobian.
    """
    keep = (~known.to(images.device)).to(images.dtype)[:, None, None, None]
    return 0.5 * ((images - targets.detach()).square() * keep).sum() / n_objects


def recon_target(x0_guided: Tensor, x0_cond: Tensor, n_views: int, std_rescale: float) -> Tensor:
    """MVDream's x0 target (B*N, C, h, w): the guided x0, blended by ``std_rescale`` with itself
    rescaled to the conditional x0's std over each object's N views."""
    if std_rescale <= 0:
        return x0_guided
    guided = x0_guided.unflatten(0, (-1, n_views))  # (B, N, C, h, w)
    cond = x0_cond.unflatten(0, (-1, n_views))
    dims = (1, 2, 3, 4)
    factor = (cond.std(dims, keepdim=True) + 1e-8) / (guided.std(dims, keepdim=True) + 1e-8)
    adjusted = (guided * factor).flatten(0, 1)
    return std_rescale * adjusted + (1.0 - std_rescale) * x0_guided


@dataclass
class Distillation:
    """One SDS evaluation: the loss and what went into it, rows b*N .. b*N+N-1 per object."""

    loss: Tensor  # scalar, differentiable w.r.t. the latents
    latents: Tensor  # (B*N, C, h, w) z, detached
    noise: Tensor  # (B*N, C, h, w) eps
    grad: Tensor  # (B*N, C, h, w) d loss / d latents * B (zero on given views)
    noisy: Tensor  # (B*N, C, h, w) z_t (given views: their clean latents)
    timesteps: Tensor  # (B*N,) t of every view (given views: 0)
    eps_hat: Tensor  # (B*N, C, h, w) the guided noise prediction
    x0_hat: Tensor  # (B*N, C, h, w) the guided one-step x0 prediction


def distill(
    model: nn.Module,
    scheduler: DDPMScheduler,
    latents: Tensor,
    conditions: ViewConditions,
    object_timesteps: Tensor,
    noise: Tensor,
    config: SdsConfig,
    known: Tensor | None = None,
) -> Distillation:
    """The SDS (or x0-reconstruction) loss of latents (B*N, C, h, w) of B objects x N views.

    ``object_timesteps`` (B,) are shared by each object's views; ``noise`` is eps (B*N, ...);
    ``scheduler`` is the prior's training noise schedule (alpha_bar, prediction type).
    ``known`` (B*N,) bool marks views given clean (image conditions, at t = 0 as in training):
    their rows of ``latents`` are their clean latents and get no gradient.
    """
    n_objects, n_views = conditions.K.shape[:2]
    if latents.shape[0] != n_objects * n_views or object_timesteps.shape != (n_objects,):
        raise ValueError(
            f"latents {tuple(latents.shape)}, timesteps {tuple(object_timesteps.shape)}: "
            f"expected {n_objects}x{n_views} rows and {n_objects} timesteps"
        )
    device = latents.device
    if known is None:
        known = torch.zeros(latents.shape[0], dtype=torch.bool, device=device)
    known = known.to(device)
    timesteps = object_timesteps.to(device).long().repeat_interleave(n_views)  # (B*N,)
    timesteps = torch.where(known, 0, timesteps)
    given = known[:, None, None, None]
    alphas_cumprod = scheduler.alphas_cumprod.to(device)[timesteps].float()[:, None, None, None]
    with torch.no_grad():
        clean = latents.detach()
        noisy = torch.where(given, clean, scheduler.add_noise(clean, noise, timesteps))
        guided, cond = prior_predictions(model, noisy, timesteps, conditions, config.guidance_scale)
        prediction_type = scheduler.config.prediction_type
        eps_hat = epsilon_from_prediction(guided, noisy, alphas_cumprod, prediction_type)
        x0_hat = x0_from_epsilon(noisy, eps_hat, alphas_cumprod)
        if config.mode == "sds":
            weight = sds_weight(alphas_cumprod, config.weighting)
            grad = sds_gradient(eps_hat, noise, weight, config.grad_clip)
        else:
            eps_cond = epsilon_from_prediction(cond, noisy, alphas_cumprod, prediction_type)
            x0_cond = x0_from_epsilon(noisy, eps_cond, alphas_cumprod)
            target = recon_target(x0_hat, x0_cond, n_views, config.recon_std_rescale)
            grad = clean - target  # sds_loss of it is MVDream's 0.5 ||z - sg(target)||^2 / B
        grad = torch.where(given, torch.zeros_like(grad), grad)
    loss = sds_loss(latents, grad, n_objects)
    return Distillation(loss, clean, noise, grad, noisy, timesteps, eps_hat, x0_hat)
