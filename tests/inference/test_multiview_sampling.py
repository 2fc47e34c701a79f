"""The denoising loop of inference: schedulers by name, seeds, guidance, clean given views."""

import dataclasses
import typing

import pytest
import torch

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.config import SampleConfig
from viewdiff.diffusion import noise_scheduler
from viewdiff.prior.call import ViewConditions, encode_prompts
from viewdiff.sampling import SCHEDULERS, denoise_views, inference_scheduler, initial_noise
from viewdiff.tiny import sd21_base_scheduler_config


def schedule(prediction_type="epsilon") -> dict:
    return dict(noise_scheduler(sd21_base_scheduler_config(), True, prediction_type).config)


def test_every_scheduler_runs_on_the_training_schedule_and_unknown_ones_are_listed():
    literal = typing.get_type_hints(SampleConfig)["scheduler"]
    assert set(typing.get_args(literal)) == set(SCHEDULERS)
    assert SampleConfig().scheduler == "unipc" and SampleConfig().num_inference_steps == 10
    for name in SCHEDULERS:
        scheduler = inference_scheduler(name, schedule())
        scheduler.set_timesteps(10)
        # Zero terminal SNR with epsilon prediction: t = 999 has no signal, never evaluate it.
        assert scheduler.timesteps.max() < 999, name
        assert scheduler.config.prediction_type == "epsilon"
    v_scheduler = inference_scheduler("unipc", schedule("v_prediction"))
    v_scheduler.set_timesteps(10)
    assert v_scheduler.timesteps[0] == 999
    with pytest.raises(ValueError, match="unknown scheduler 'plms'; known: unipc, ddim, ddpm"):
        inference_scheduler("plms", schedule())


def conditions(prior, prompts, n_views, guided=True) -> ViewConditions:
    K = intrinsics_from_fov(48.0, 64, 64).expand(len(prompts), n_views, 3, 3)
    w2c = orbit(n_views, 30.0, 4.0).expand(len(prompts), n_views, 4, 4)
    text = encode_prompts(prior.text_encoder, prior.tokenizer, prompts)
    empty = encode_prompts(prior.text_encoder, prior.tokenizer, [""] * len(prompts))
    pose = pose_features(K, w2c, (64, 64))
    return ViewConditions(text, empty if guided else None, K, w2c, pose, (64, 64))


def denoise(prior, model=None, prompts=("a red box",), n_views=3, seeds=(0,), scheduler="unipc",
            guidance=3.0, known=None, clean=None, steps=2):  # fmt: skip
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    noise = initial_noise((len(prompts), n_views, 4, 8, 8), generators)
    return denoise_views(
        model or prior.model,
        inference_scheduler(scheduler, prior.scheduler_config),
        noise,
        conditions(prior, list(prompts), n_views),
        steps,
        guidance,
        generators,
        known,
        clean,
    )


def test_same_seed_same_views_and_an_object_does_not_depend_on_its_batch(prior):
    first = denoise(prior)
    assert first.shape == (1, 3, 4, 8, 8)
    torch.testing.assert_close(denoise(prior), first, rtol=0, atol=0)
    assert not torch.allclose(denoise(prior, seeds=(1,)), first)
    pair = denoise(prior, prompts=("a blue ball", "a red box"), seeds=(5, 0))
    torch.testing.assert_close(pair[1:], first, rtol=0, atol=1e-5)  # batch numerics only
    ddpm = denoise(prior, scheduler="ddpm")  # a sampler that draws noise in its steps
    torch.testing.assert_close(denoise(prior, scheduler="ddpm"), ddpm, rtol=0, atol=0)


def test_guidance_one_is_the_conditional_branch_alone(prior, recorder):
    model = recorder(prior.model)
    alone = denoise(prior, model, guidance=1.0)
    assert [call["latents"].shape[0] for call in model.calls] == [3, 3]  # one pass, no uncond
    cond = conditions(prior, ["a red box"], 3).text
    for call in model.calls:
        torch.testing.assert_close(call["text"], cond.expand(3, -1, -1))
    model.calls.clear()
    # The guided path at w -> 1 (uncond + w (cond - uncond)) lands on the conditional branch.
    nearly = denoise(prior, model, guidance=1.0 + 1e-6)
    assert [call["latents"].shape[0] for call in model.calls] == [6, 6]  # [uncond, cond]
    torch.testing.assert_close(nearly, alone, rtol=0, atol=1e-4)
    assert not torch.allclose(denoise(prior, guidance=5.0), alone, atol=1e-3)


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_given_views_stay_clean_at_timestep_zero_and_come_back_unchanged(
    prior, recorder, scheduler
):
    known = torch.tensor([[False, True, False, True]])
    clean = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    model = recorder(prior.model)
    latents = denoise(prior, model, n_views=4, scheduler=scheduler, known=known, clean=clean)
    torch.testing.assert_close(latents[known], clean[known], rtol=0, atol=0)
    assert not torch.allclose(latents[~known], clean[~known])
    for call in model.calls:
        for half in (call["latents"][:4], call["latents"][4:]):  # uncond and cond rows
            # Euler scales its samples by 1 / sqrt(sigma^2 + 1): given views must not be.
            torch.testing.assert_close(half[known[0]], clean[known], rtol=0, atol=0)
        timesteps = call["timesteps"].reshape(2, 4)
        assert (timesteps[:, known[0]] == 0).all() and (timesteps[:, ~known[0]] > 0).all()


def test_denoising_refuses_mismatched_inputs(prior):
    with pytest.raises(ValueError, match="expected \\(B, N, ...\\) latents"):
        denoise_views(
            prior.model,
            inference_scheduler("unipc", prior.scheduler_config),
            torch.zeros(1, 2, 4, 8, 8),
            conditions(prior, ["a box"], 3),
            1,
            1.0,
            torch.Generator(),
        )
    no_empty = dataclasses.replace(conditions(prior, ["a box"], 2), empty_text=None)
    with pytest.raises(ValueError, match="needs the empty prompt"):
        denoise_views(
            prior.model,
            inference_scheduler("unipc", prior.scheduler_config),
            torch.zeros(1, 2, 4, 8, 8),
            no_empty,
            1,
            7.5,
            torch.Generator(),
        )
