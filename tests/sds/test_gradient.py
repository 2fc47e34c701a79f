"""The SDS gradient and loss on the tiny pipeline: exact gradients, oracle, clipping, guidance."""

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.prior.call import ViewConditions, encode_prompts
from viewdiff.sds.config import SdsConfig
from viewdiff.sds.gradient import (
    distill,
    epsilon_from_prediction,
    image_target_loss,
    recon_target,
    sds_gradient,
    sds_loss,
    sds_weight,
    x0_from_epsilon,
)


def test_loss_gradient_is_grad_over_objects():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 4, 8, 8, generator=generator, dtype=torch.float64).requires_grad_()
    grad = torch.randn(6, 4, 8, 8, generator=generator, dtype=torch.float64)
    sds_loss(latents, grad, n_objects=2).backward()
    assert torch.equal(latents.grad, grad / 2)
    latents.grad = None
    loss = sds_loss(latents, grad, n_objects=3)
    loss.backward()
    assert torch.equal(latents.grad, grad / 3)
    target = (latents - grad).detach()
    assert loss.item() == pytest.approx((0.5 * (latents - target).square().sum() / 3).item())


def test_weightings():
    abar = torch.tensor([0.9, 0.5, 0.1])
    assert torch.allclose(sds_weight(abar, "sds"), 1 - abar)
    assert torch.equal(sds_weight(abar, "uniform"), torch.ones(3))
    assert torch.allclose(sds_weight(abar, "fantasia3d"), abar.sqrt() * (1 - abar))
    with pytest.raises(ValueError, match="unknown SDS weighting"):
        sds_weight(abar, "dreamfusion")


def test_clipping_bounds_every_element():
    eps_hat, eps = 10 * torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    grad = sds_gradient(eps_hat, eps, torch.ones(()), grad_clip=0.3)
    assert grad.abs().max() <= 0.3
    assert grad.abs().max() == pytest.approx(0.3)
    assert torch.equal(sds_gradient(eps_hat, eps, torch.ones(())), eps_hat - eps)


def test_v_prediction_converts_to_the_noise():
    generator = torch.Generator().manual_seed(1)
    x0, eps = (
        torch.randn(3, 4, 8, 8, generator=generator),
        torch.randn(3, 4, 8, 8, generator=generator),
    )
    abar = torch.tensor([0.9, 0.4, 0.05])[:, None, None, None]
    noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(epsilon_from_prediction(v, noisy, abar, "v_prediction"), eps, atol=1e-5)
    assert torch.allclose(x0_from_epsilon(noisy, eps, abar), x0, atol=1e-4)
    with pytest.raises(ValueError, match="epsilon or v"):
        epsilon_from_prediction(v, noisy, abar, "sample")


def test_recon_target_matches_the_conditional_std():
    generator = torch.Generator().manual_seed(2)
    guided = 3 * torch.randn(8, 4, 8, 8, generator=generator)
    cond = torch.randn(8, 4, 8, 8, generator=generator)
    target = recon_target(guided, cond, n_views=4, std_rescale=1.0)
    for b in range(2):
        rows = slice(4 * b, 4 * b + 4)
        assert target[rows].std().item() == pytest.approx(cond[rows].std().item(), rel=1e-4)
    assert torch.equal(recon_target(guided, cond, 4, 0.0), guided)


class Oracle(torch.nn.Module):
    """A 'prior' that predicts exactly the noise it was given (via a side channel)."""

    def __init__(self, unet, noise):
        super().__init__()
        self.unet, self.noise, self.calls = unet, noise, []

    def forward(self, latents, timesteps, text, K, w2c, pose, **kwargs):
        self.calls.append({"rows": latents.shape[0], "timesteps": timesteps.clone()})
        return self.noise.repeat(latents.shape[0] // self.noise.shape[0], 1, 1, 1)


def _conditions(prior, n_objects, n_views, with_empty=True):
    K = intrinsics_from_fov(40, 64, 64).expand(n_objects, n_views, 3, 3)
    w2c = orbit(n_views, 30, 4.0).expand(n_objects, n_views, 4, 4)
    text = encode_prompts(prior.text_encoder, prior.tokenizer, ["a red ball"] * n_objects)
    empty = encode_prompts(prior.text_encoder, prior.tokenizer, [""] * n_objects)
    return ViewConditions(text, empty if with_empty else None, K, w2c,
                          pose_features(K, w2c, (64, 64)), (64, 64))  # fmt: skip


def test_oracle_prediction_gives_zero_gradient(prior):
    scheduler = DDPMScheduler.from_config(prior.scheduler_config)
    noise = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    latents = torch.randn(6, 4, 8, 8).requires_grad_()
    oracle = Oracle(prior.model.unet, noise)
    result = distill(oracle, scheduler, latents, _conditions(prior, 2, 3), torch.tensor([100, 700]),
                     noise, SdsConfig(guidance_scale=7.5))  # fmt: skip
    assert torch.count_nonzero(result.grad) == 0
    result.loss.backward()
    assert torch.count_nonzero(latents.grad) == 0


def test_views_share_their_objects_t_and_guidance_one_is_conditional_only(prior, recorder):
    scheduler = DDPMScheduler.from_config(prior.scheduler_config)
    model = recorder(prior.model)
    latents = torch.randn(6, 4, 8, 8).requires_grad_()
    noise = torch.randn(6, 4, 8, 8)
    conditions = _conditions(prior, 2, 3, with_empty=False)
    result = distill(model, scheduler, latents, conditions, torch.tensor([40, 900]), noise,
                     SdsConfig(guidance_scale=1.0))  # fmt: skip
    (call,) = model.calls
    assert call["latents"].shape[0] == 6  # no unconditional rows
    assert call["timesteps"].tolist() == [40, 40, 40, 900, 900, 900]
    assert torch.equal(result.timesteps, call["timesteps"])
    # The latent gradient is exactly w(t) (eps_hat - eps) of the recorded call, / B in autograd.
    result.loss.backward()
    assert torch.allclose(latents.grad, result.grad / 2)
    abar = scheduler.alphas_cumprod[call["timesteps"]][:, None, None, None]
    expected = (1 - abar) * (result.eps_hat - noise)
    assert torch.allclose(result.grad, expected, atol=1e-6)


def test_guided_rows_and_known_views(prior, recorder):
    scheduler = DDPMScheduler.from_config(prior.scheduler_config)
    model = recorder(prior.model)
    latents = torch.randn(3, 4, 8, 8).requires_grad_()
    known = torch.tensor([True, False, False])
    config = SdsConfig(guidance_scale=50.0)
    result = distill(model, scheduler, latents, _conditions(prior, 1, 3), torch.tensor([500]),
                     torch.randn(3, 4, 8, 8), config, known)  # fmt: skip
    (call,) = model.calls
    assert call["latents"].shape[0] == 6  # unconditional + conditional rows
    assert call["timesteps"].tolist() == [0, 500, 500] * 2  # the given view at t = 0
    assert torch.equal(call["latents"][0], latents[0].detach())  # ... and clean
    assert torch.count_nonzero(result.grad[0]) == 0
    recon_config = dataclasses.replace(config, mode="recon")
    recon = distill(model, scheduler, latents, _conditions(prior, 1, 3), torch.tensor([500]),
                    torch.randn(3, 4, 8, 8), recon_config, known)  # fmt: skip
    assert torch.count_nonzero(recon.grad[0]) == 0 and torch.count_nonzero(recon.grad[1:]) > 0


def test_shapes_are_checked(prior):
    scheduler = DDPMScheduler.from_config(prior.scheduler_config)
    with pytest.raises(ValueError, match="expected 2x3 rows and 2 timesteps"):
        distill(prior.model, scheduler, torch.randn(6, 4, 8, 8), _conditions(prior, 2, 3),
                torch.tensor([1, 2, 3]), torch.randn(6, 4, 8, 8), SdsConfig())  # fmt: skip


def test_image_target_loss_skips_given_views():
    images = torch.zeros(3, 3, 4, 4, requires_grad=True)
    targets = torch.ones(3, 3, 4, 4)
    loss = image_target_loss(images, targets, torch.tensor([True, False, False]), n_objects=1)
    assert loss.item() == pytest.approx(0.5 * 2 * 48)
    loss.backward()
    assert torch.count_nonzero(images.grad[0]) == 0
    assert torch.equal(images.grad[1:], -torch.ones(2, 3, 4, 4))
