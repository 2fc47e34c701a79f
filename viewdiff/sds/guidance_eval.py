"""threestudio's most useful SDS debugging view: what the prior makes of this step's renders.

For the first camera group of a step, four rows of N views: the renders, the noisy latents z_t
decoded, the prior's one-step x0 prediction decoded, and a full denoise from that t (DDIM from
the grid step nearest t, SDEdit-style, with the same noise). When the full denoise shows the
prompted object and the one-step x0 a blur of it, the gradient points the right way.
"""

from __future__ import annotations

import torch
from PIL import Image

from viewdiff.prior.call import ViewConditions, decode_latents
from viewdiff.sampling import ddim_scheduler, denoise_views
from viewdiff.sds.loop import ScoreDistillation, StepReport
from viewdiff.visualize import image_grid, to_pil

EVAL_DENOISE_STEPS = 20


def _first_group(conditions: ViewConditions) -> ViewConditions:
    """The conditions of object 0."""
    c = conditions
    empty = None if c.empty_text is None else c.empty_text[:1]
    return ViewConditions(c.text[:1], empty, c.K[:1], c.w2c[:1], c.pose[:1], c.image_size_hw)


@torch.no_grad()
def guidance_eval_picture(run: ScoreDistillation, report: StepReport) -> Image.Image:
    """Rows: renders, z_t, one-step x0, full denoise from t, for the step's first group."""
    prior, n_views, d = run.prior, run.n_views, report.distillation
    rows = slice(0, n_views)
    conditions = _first_group(report.conditions)
    scheduler = ddim_scheduler(prior.scheduler_config)
    scheduler.set_timesteps(EVAL_DENOISE_STEPS, device=prior.device)
    t = int(report.timesteps[0])
    first_step = int((scheduler.timesteps.cpu() - t).abs().argmin())
    start = scheduler.timesteps[first_step]
    latents = scheduler.add_noise(d.latents[rows], d.noise[rows], start.repeat(n_views))
    known = (d.timesteps[rows] == 0) & (report.timesteps[0] != 0)  # given views stay clean
    denoised = denoise_views(
        prior.model,
        scheduler,
        latents[None],
        conditions,
        EVAL_DENOISE_STEPS,
        run.config.guidance_scale,
        torch.Generator().manual_seed(0),
        known=known[None].cpu(),
        clean=d.latents[rows][None],
        first_step=first_step,
    )[0]
    decoded = [decode_latents(prior.vae, x) for x in (d.noisy[rows], d.x0_hat[rows], denoised)]
    renders = report.renders[0] * 2.0 - 1.0
    images = [to_pil(image) for block in (renders, *decoded) for image in block]
    return image_grid(images, columns=n_views)
