"""The target branch's step of TrAME's 2D trajectory, two ways (``trame.sampler``).

- ``DdcmBranch`` (``ddcm``, InfEdit's DDCM / TrAME Sec. 3.2; the math in ``viewdiff.trame.ddcm``):
  both branches are noised with one fresh noise at every step and the target's next clean latents
  are DDCM's estimate with kappa_k's source consistency correction (virtual inversion: nothing to
  invert, no state besides tgt0);
- ``DdpmBranch`` (``ddpm``, the edit-friendly DDPM noise space of ``viewdiff.editing.inversion``):
  its constructor inverts the original renders once, batch by batch as the edit runs them; the
  source branch is that trajectory x^s_k and the target steps its own latents x^t_k with the
  inversion's noise maps z_k (kappa unused). Its state is x^t.

Both take the Trajectory-Anchored Scheme's anchored estimate (TAS, Sec. 4.2): DDCM steps from it,
DDPM moves x^t by what anchoring moves the clean estimate (times sqrt(abar_k)); both blend with
the source outside the edit mask when given one (local blending). ``SAMPLERS`` builds the branch
``trame.sampler`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import Tensor

from viewdiff.editing.inversion import invert, step_with_noise
from viewdiff.trame.ddcm import clean_estimate, ddcm_target, noisy_pair
from viewdiff.trame.dual_prior import DualBranchPrior
from viewdiff.trame.plan import schedule_value as value_at


class TargetBranch(Protocol):
    """How the target branch takes step k of the trajectory for one batch of views."""

    def step(
        self,
        k: int,
        views: list[int],
        updated: list[int],
        tgt0: Tensor,
        anchored: Tensor | None,
        noise: Tensor,
        mask: Tensor | None,
    ) -> Tensor:
        """The target's next clean latents (n, C, h, w) of ``views`` from its estimate tgt0
        (n, C, h, w), TAS's ``anchored`` one (None without TAS), the step's shared noise and
        the latent edit mask to blend with (None: no blending); ``updated``: the views that
        take the result."""
        ...

    def state(self) -> dict[str, Tensor]:
        """The tensors a checkpoint needs to resume this branch."""
        ...

    def restore(self, tensors: Mapping[str, Tensor]) -> None:
        """Take back what ``state`` returned."""
        ...


class DdcmBranch:
    """DDCM's dual-branch step (InfEdit / TrAME): fresh shared noise, kappa's correction."""

    def __init__(self, prior: DualBranchPrior, src0: Tensor) -> None:
        self.prior, self.src0 = prior, src0  # src0: (V, C, h, w) the original renders' latents

    def step(
        self,
        k: int,
        views: list[int],
        updated: list[int],
        tgt0: Tensor,
        anchored: Tensor | None,
        noise: Tensor,
        mask: Tensor | None,
    ) -> Tensor:
        """DDCM: tgt_cons + kappa_k (src0 - src_cons) from the (anchored) estimate."""
        alpha_bar = self.prior.alpha_bar(k)
        src0 = self.src0[views]
        x_s, x_t = noisy_pair(src0, tgt0 if anchored is None else anchored, noise, alpha_bar)
        eps_s, eps_t = self.prior.predictions(views, x_s, x_t, k)
        kappa = value_at(self.prior.config.kappa, k)
        new = ddcm_target(src0, x_s, x_t, eps_s, eps_t, alpha_bar, kappa).to(src0)
        if mask is not None:
            new = mask * new + (1 - mask) * src0
        return new

    def state(self) -> dict[str, Tensor]:
        """Nothing: the state between DDCM steps is tgt0 alone."""
        return {}

    def restore(self, tensors: Mapping[str, Tensor]) -> None:
        """Nothing to take back."""


class DdpmBranch:
    """Edit-friendly DDPM: the source branch is the renders' inversion, the target steps with
    its noise maps."""

    def __init__(self, prior: DualBranchPrior, src0: Tensor) -> None:
        self.prior, self.src0 = prior, src0
        # (steps + 1, V, C, h, w) and (steps, V, C, h, w)
        self.source_xs, self.source_zs = invert_sources(prior, src0)
        self.x_tgt = self.source_xs[prior.config.start].clone()  # (V, C, h, w)

    def step(
        self,
        k: int,
        views: list[int],
        updated: list[int],
        tgt0: Tensor,
        anchored: Tensor | None,
        noise: Tensor,
        mask: Tensor | None,
    ) -> Tensor:
        """x^t_{k+1} of ``views`` with the source's stored noise z_k (kept for ``updated``);
        returns the clean estimate (the last step's: x^t_{k+1} itself)."""
        prior, t = self.prior, self.prior.grid[k]
        alpha_bar = prior.alpha_bar(k)
        x_t = self.x_tgt[views]
        if anchored is not None:  # move x_t by what anchoring moves its clean estimate
            x_t = x_t + alpha_bar.sqrt().to(x_t) * (anchored - tgt0)
        _, eps_t = prior.predictions(views, self.source_xs[k, views], x_t, k)
        stepped = step_with_noise(prior.scheduler, eps_t, t, x_t, self.source_zs[k, views])
        last = k == prior.config.steps - 1
        clean = stepped if last else clean_estimate(x_t, eps_t, alpha_bar).to(x_t)
        if mask is not None:
            stepped = mask * stepped + (1 - mask) * self.source_xs[k + 1, views]
            clean = mask * clean + (1 - mask) * self.src0[views]
        self.x_tgt[updated] = stepped[[views.index(v) for v in updated]]
        return clean

    def state(self) -> dict[str, Tensor]:
        """The target's latents x^t."""
        return {"x_tgt": self.x_tgt}

    def restore(self, tensors: Mapping[str, Tensor]) -> None:
        """x^t of a checkpoint (the inversion is recomputed: it is seeded)."""
        self.x_tgt = tensors["x_tgt"].to(self.src0).contiguous()


def invert_sources(prior: DualBranchPrior, src0: Tensor) -> tuple[Tensor, Tensor]:
    """The edit-friendly inversion of the latents src0 (V, C, h, w), batch by batch as the edit
    runs them: xs (steps + 1, V, C, h, w) and zs (steps, V, C, h, w)."""
    config = prior.config
    xs = torch.zeros((config.steps + 1, *src0.shape), dtype=src0.dtype)
    zs = torch.zeros((config.steps, *src0.shape), dtype=src0.dtype)
    generator = torch.Generator().manual_seed(config.seed + 1)
    steps_of = {int(t): k for k, t in enumerate(prior.grid)}
    for views, updated in prior.plan.batches():
        # The source rows of the very calls the edit makes (target = source here), so that an
        # edit with the source prompt retraces the inversion to the bit.
        def denoise(latents: Tensor, timesteps: Tensor, views: list[int] = views) -> Tensor:
            k = steps_of[int(timesteps[0])]
            guidance = config.source_guidance
            return prior.predictions(views, latents, latents, k, guidance=guidance)[0]

        with torch.no_grad():
            inversion = invert(denoise, prior.scheduler, src0[views], config.steps, generator)
        keep = [views.index(v) for v in updated]
        xs[:, updated] = inversion.xs[:, keep].cpu()
        zs[:, updated] = inversion.zs[:, keep].cpu()
    return xs.to(src0.device), zs.to(src0.device)


SAMPLERS: dict[str, Callable[[DualBranchPrior, Tensor], TargetBranch]] = {
    "ddcm": DdcmBranch,
    "ddpm": DdpmBranch,
}
