"""Edit-friendly DDPM inversion: exact reconstruction, the noise statistics, diffusers' step."""

import pytest
import torch
from diffusers import DDIMScheduler

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.editing.editing_model import denoiser, load_editing_model
from viewdiff.editing.inversion import ddpm_grid, generate, invert, mean_and_sigma, step_with_noise
from viewdiff.inference.trajectory import Trajectory
from viewdiff.tiny import sd21_base_scheduler_config


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler.from_config(sd21_base_scheduler_config())


def oracle(scheduler: DDIMScheduler, x0: torch.Tensor):
    """A float64 denoiser that knows x0: eps_hat(x_t) = (x_t - sqrt(abar) x0) / sqrt(1 - abar),
    slightly wrong (0.9 x0) so that the steps are not trivial."""

    def denoise(latents, timesteps):
        abar = scheduler.alphas_cumprod.double()[timesteps][:, None, None, None]
        return (latents - abar.sqrt() * 0.9 * x0) / (1 - abar).sqrt()

    return denoise


@pytest.mark.parametrize("skip", [0, 10, 49])
def test_float64_reconstruction_is_exact(skip):
    scheduler = _scheduler()
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    denoise = oracle(scheduler, x0)
    inversion = invert(denoise, scheduler, x0, 50, torch.Generator().manual_seed(1))
    assert inversion.xs.shape == (51, 3, 4, 8, 8) and inversion.zs.shape == (50, 3, 4, 8, 8)
    assert torch.equal(inversion.xs[-1], x0)
    assert inversion.zs[-1].abs().max() > 0  # z_1 kept, not zeroed
    assert (generate(denoise, scheduler, inversion, skip) - x0).abs().max() <= 1e-10


def test_noise_maps_are_not_standard_normal():
    scheduler = _scheduler()
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inversion = invert(oracle(scheduler, x0), scheduler, x0, 50, torch.Generator().manual_seed(2))
    mid = [i for i, t in enumerate(inversion.timesteps) if 300 <= t <= 700]
    variances = [inversion.zs[i].var().item() for i in mid]
    assert min(variances) > 1.5, variances
    flat = inversion.zs.flatten(1)
    lag1 = [torch.corrcoef(flat[i : i + 2])[0, 1].item() for i in mid[:-1]]
    assert max(lag1) < -0.2, lag1


def test_our_step_is_diffusers_and_the_formulas():
    scheduler = _scheduler()
    ddpm_grid(scheduler, 20)
    generator = torch.Generator().manual_seed(3)
    sample, output, z = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(3))
    for t in scheduler.timesteps[[0, 7, 19]]:
        mean, sigma = mean_and_sigma(scheduler, output, t, sample)
        reference = scheduler.step(output, t, sample, eta=1.0, variance_noise=z).prev_sample
        stepped = step_with_noise(scheduler, output, t, sample, z)
        assert torch.allclose(stepped, reference, atol=0) and torch.allclose(
            mean + sigma * z, reference, atol=1e-6
        )
        # DDPM's posterior on the grid (DDIM Eq. 12 and 16 at eta = 1), written out.
        abar = scheduler.alphas_cumprod[t]
        previous = t - 1000 // 20
        abar_prev = (
            scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod
        )
        variance = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
        x0_pred = (sample - (1 - abar).sqrt() * output) / abar.sqrt()
        formula = abar_prev.sqrt() * x0_pred + (1 - abar_prev - variance).sqrt() * output
        assert sigma.item() == pytest.approx(variance.sqrt().item(), rel=1e-6)
        assert torch.allclose(mean, formula, atol=1e-6)


@pytest.mark.parametrize("skip", [0, 10, 11])
def test_tiny_sd_folder_reconstructs_to_fp32_precision(tiny_sd, skip):
    editing = load_editing_model(tiny_sd)
    scheduler = editing.scheduler()
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    denoise = denoiser(editing, "a red ball", 3.5)
    inversion = invert(denoise, scheduler, x0, 12, torch.Generator().manual_seed(5))
    assert (generate(denoise, scheduler, inversion, skip) - x0).abs().max() <= 1e-4
    edited = generate(denoiser(editing, "a blue box", 15.0), scheduler, inversion, skip)
    assert (edited - x0).abs().max() > 1e-3  # another prompt changes the result


@pytest.mark.parametrize("skip", [0, 10, 11])
def test_multiview_prior_reconstructs_n_views_jointly(tiny_export, recorder, skip):
    editing = load_editing_model(tiny_export)
    editing.model = recorder(editing.model)
    scheduler = editing.scheduler()
    cameras = Trajectory(
        intrinsics_from_fov(40, 64, 64).expand(3, 3, 3), orbit(3, 30, 4.0), (64, 64)
    )
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    known = torch.tensor([True, False, False])
    denoise = denoiser(editing, "a red ball", 3.5, cameras)
    inversion = invert(denoise, scheduler, x0, 12, torch.Generator().manual_seed(7), known)
    call = editing.model.calls[0]
    assert call["n_views"] == 3 and call["latents"].shape[0] == 6  # one object, guided
    assert call["timesteps"].tolist()[:3] == [0, inversion.timesteps[0], inversion.timesteps[0]]
    assert torch.count_nonzero(inversion.zs[:, 0]) == 0
    assert torch.equal(inversion.xs[:, 0], x0[0].expand(13, 4, 8, 8))
    assert (generate(denoise, scheduler, inversion, skip) - x0).abs().max() <= 1e-4


def test_skip_is_checked():
    scheduler = _scheduler()
    x0 = torch.zeros(1, 4, 8, 8, dtype=torch.float64)
    inversion = invert(oracle(scheduler, x0), scheduler, x0, 5, torch.Generator())
    with pytest.raises(ValueError, match=r"skip must be in \[0, 5\)"):
        generate(oracle(scheduler, x0), scheduler, inversion, 5)
