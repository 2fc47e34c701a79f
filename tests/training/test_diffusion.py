"""Training diffusion: schedule, timesteps, clean views, prompt dropout, targets, loss."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from viewdiff.diffusion import (
    add_noise,
    detached_clean_targets,
    diffusion_sample,
    draw_clean_views,
    draw_prompt_dropout,
    draw_timesteps,
    drop_prompts,
    generated_views_mse,
    loss_target,
    noise_scheduler,
    resolve_prediction_type,
    velocity,
)
from viewdiff.tiny import sd21_base_scheduler_config


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def schedule() -> DDPMScheduler:
    return noise_scheduler(sd21_base_scheduler_config(), True, "epsilon")


def test_zero_terminal_snr_schedule(schedule):
    plain = noise_scheduler(sd21_base_scheduler_config(), False, "v_prediction")
    assert plain.config.prediction_type == "v_prediction"
    assert schedule.alphas_cumprod[-1] == 0 and plain.alphas_cumprod[-1] > 1e-3
    # Lin et al. Alg. 1 keeps the first step and shifts the rest: sqrt(abar) stays decreasing.
    torch.testing.assert_close(schedule.alphas_cumprod[0], plain.alphas_cumprod[0])
    assert (schedule.alphas_cumprod.diff() < 0).all()


def test_prediction_type_follows_the_base_unless_chosen():
    assert resolve_prediction_type("base", "epsilon") == "epsilon"
    assert resolve_prediction_type("v_prediction", "epsilon") == "v_prediction"
    with pytest.raises(ValueError, match="'sample' is not supported"):
        resolve_prediction_type("base", "sample")


def test_one_timestep_per_object_repeated_over_its_views():
    timesteps = draw_timesteps(500, 3, 1000, generator())
    per_object = timesteps.reshape(500, 3)
    assert (per_object == per_object[:, :1]).all()
    assert timesteps.min() >= 0 and timesteps.max() <= 999 and timesteps.max() > 990
    assert per_object[:, 0].unique().numel() > 300  # drawn, not constant


def test_clean_views_only_among_the_first_views_at_their_rate():
    clean = draw_clean_views(20_000, 5, 0.25, 2, generator())
    assert not clean[:, 2:].any()
    rates = clean[:, :2].float().mean(dim=0)
    torch.testing.assert_close(rates, torch.full((2,), 0.25), atol=0.015, rtol=0)
    # Independent per view: both clean about 1/16 of the time.
    assert abs(clean[:, :2].all(dim=1).float().mean().item() - 0.0625) < 0.01


def test_prompt_dropout_rate_and_replacement():
    per_object = draw_prompt_dropout(20_000, 3, 0.2, "object", generator())
    assert abs(per_object.float().mean().item() - 0.2) < 0.015
    assert (per_object == per_object[:, :1]).all()  # all views of an object together
    per_view = draw_prompt_dropout(20_000, 3, 0.2, "view", generator())
    assert abs(per_view.float().mean().item() - 0.2) < 0.015
    # Independent per view: all three dropped about 0.2^3 of the time, not 0.2.
    assert abs(per_view.all(dim=1).float().mean().item() - 0.008) < 0.004
    with pytest.raises(ValueError, match="prompt_dropout_per"):
        draw_prompt_dropout(2, 3, 0.2, "batch", generator())
    assert drop_prompts(["a", "b", "c"], torch.tensor([False, True, False])) == ["a", "", "c"]
    with pytest.raises(ValueError, match="3 prompts but 2"):
        drop_prompts(["a", "b", "c"], torch.tensor([True, False]))


def test_noise_and_velocity_match_diffusers(schedule):
    latents = torch.randn(6, 4, 8, 8, generator=generator(1))
    noise = torch.randn(6, 4, 8, 8, generator=generator(2))
    timesteps = torch.tensor([0, 1, 250, 500, 998, 999])
    alphas = schedule.alphas_cumprod
    expected = schedule.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(add_noise(latents, noise, timesteps, alphas), expected)
    expected = schedule.get_velocity(latents, noise, timesteps)
    torch.testing.assert_close(velocity(latents, noise, timesteps, alphas), expected)
    # Zero terminal SNR: the last step is pure noise, its velocity minus the clean latent.
    torch.testing.assert_close(add_noise(latents, noise, timesteps, alphas)[-1], noise[-1])
    torch.testing.assert_close(
        loss_target("v_prediction", latents, noise, timesteps, alphas)[-1], -latents[-1]
    )
    assert loss_target("epsilon", latents, noise, timesteps, alphas) is noise


def test_loss_covers_the_generated_views_only():
    prediction, target = torch.zeros(4, 4, 2, 2), torch.zeros(4, 4, 2, 2)
    target[1] = 3.0  # a clean view's error must not count
    target[2] = 1.0
    generated = torch.tensor([True, False, True, True])
    assert generated_views_mse(prediction, target, generated).item() == pytest.approx(1 / 3)
    prediction.requires_grad_(True)
    none = generated_views_mse(prediction, target, torch.zeros(4, dtype=torch.bool))
    none.backward()  # an exact zero that still reaches the prediction
    assert none.item() == 0 and prediction.grad is not None


def test_detached_clean_targets_give_the_reference_mse_over_all_views():
    prediction = torch.randn(6, 4, 2, 2, generator=generator(5)).requires_grad_(True)
    target = torch.randn(6, 4, 2, 2, generator=generator(6))
    generated = torch.tensor([False, True, True, False, False, True])
    all_views = torch.ones_like(generated)
    loss = generated_views_mse(
        prediction, detached_clean_targets(prediction, target, generated), all_views
    )
    # The reference (train.py:573-578): clean targets := detached prediction, mean over all.
    reference_target = target.clone()
    reference_target[~generated] = prediction[~generated].detach().clone()
    reference = F.mse_loss(prediction.float(), reference_target.float(), reduction="none").mean()
    torch.testing.assert_close(loss, reference)
    (gradient,) = torch.autograd.grad(loss, prediction)
    (reference_gradient,) = torch.autograd.grad(reference, prediction)
    torch.testing.assert_close(gradient, reference_gradient)
    assert (gradient[~generated] == 0).all() and (gradient[generated] != 0).all()
    # The generated views' mean is larger by N / generated (here 6 / 3).
    only_generated = generated_views_mse(prediction, target, generated)
    torch.testing.assert_close(loss, only_generated * 3 / 6)


def test_diffusion_sample_keeps_clean_views_clean(schedule):
    latents = torch.randn(40 * 3, 4, 4, 4, generator=generator(3))
    sample = diffusion_sample(latents, 3, schedule.alphas_cumprod, "epsilon", 0.5, 2, generator(4))
    clean = ~sample.generated
    assert clean.any() and not clean.reshape(40, 3)[:, 2].any()
    assert (sample.timesteps[clean] == 0).all()
    torch.testing.assert_close(sample.noisy_latents[clean], latents[clean], rtol=0, atol=0)
    assert (sample.noisy_latents[sample.generated] != latents[sample.generated]).any()
    again = diffusion_sample(latents, 3, schedule.alphas_cumprod, "epsilon", 0.5, 2, generator(4))
    torch.testing.assert_close(again.target, sample.target, rtol=0, atol=0)  # seeded: repeats
