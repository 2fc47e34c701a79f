"""How much a multi-view prior reads the other views: a measure in a minute, not a 10-minute fit.

The last view of a held-out object is noised to timestep t and the prior predicts its clean
latents (x_0) four ways:

- ``own``: the object's other N-1 views given clean (t = 0, as image conditions in training);
- ``other``: another object's views given clean in their place (the next object with the same
  caption where the set has one, else the same shape; the noised view's cameras kept);
- ``shuffled``: the object's own views given clean, but each with another given view's camera
  (their cameras rolled by one; the noised view keeps its own);
- ``joint``: all N views noised to t together (joint generation's situation: every view is a
  noisy observation of one object);
- ``alone``: the view by itself (N = 1: cross-frame attention sees only the view);

and, as an anchor, ``copy``: the error of taking the given view nearest to it as the answer.

A prior that uses the other views in 3D predicts a view better from its object's views than
alone, and worse from another object's. The gaps are in dB of the x_0 error (latent MSE), as the
mean over objects of each object's ratio, with its standard error: ``gain`` = alone / own,
``joint_gain`` = alone / joint, ``contrast`` = other / own, ``pose_use`` = shuffled / own. A prior
that ignores the other views has the first three near 0 dB; one that reads them but not where
they were seen from (cross-frame attention without working pose conditioning or projection
layers) has ``pose_use`` near 0 dB, and cannot place anything in 3D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from viewdiff.cameras.pose_features import pose_features
from viewdiff.diffusion import add_noise
from viewdiff.prior.call import ViewConditions, encode_images, encode_prompts, prior_predictions
from viewdiff.prior.load import MultiViewPrior
from viewdiff.sds.gradient import epsilon_from_prediction, x0_from_epsilon

RELIANCE_TIMESTEPS = (250, 500, 750)
WAYS = ("own", "other", "shuffled", "joint", "alone", "copy")
RATIOS = {
    "gain": ("alone", "own"),
    "joint_gain": ("alone", "joint"),
    "contrast": ("other", "own"),
    "pose_use": ("shuffled", "own"),
}


@dataclass(frozen=True)
class Reliance:
    """The x_0 errors of the last view at one timestep: per way, one value per object."""

    timestep: int
    errors: dict[str, list[float]]

    def mean(self, way: str) -> float:
        """The mean x_0 error (latent MSE) of one way over the objects."""
        return sum(self.errors[way]) / len(self.errors[way])

    def ratio_db(self, name: str) -> tuple[float, float]:
        """One of ``RATIOS`` in dB: the mean over objects and its standard error."""
        above, below = RATIOS[name]
        values = [10.0 * math.log10(a / b)
                  for a, b in zip(self.errors[above], self.errors[below], strict=True)]  # fmt: skip
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, math.nan
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return mean, math.sqrt(variance / len(values))

    def summary(self) -> dict[str, float]:
        """Mean errors and the ratios (with ``_se``), as plain numbers for JSON."""
        figures: dict[str, float] = {way: self.mean(way) for way in WAYS}
        for name in RATIOS:
            figures[name], figures[f"{name}_se"] = self.ratio_db(name)
        return figures


def others_rolled(w2c: Tensor) -> Tensor:
    """Cameras (B, N, 4, 4) with the given views' (all but the last) rolled by one among them;
    the last view keeps its own (the ``shuffled`` way)."""
    return torch.cat([w2c[:, :-1].roll(1, 1), w2c[:, -1:]], 1)


def _partner(objects: Sequence[dict], index: int) -> int:
    """The object whose views stand in for ``index``'s: the next with its caption, else the next
    of its shape (another colour)."""
    for key in ("prompt", "category"):
        same = [j for j, s in enumerate(objects) if s[key] == objects[index][key] and j != index]
        if same:
            return min((j for j in same if j > index), default=same[0])
    raise ValueError(f"object {index} ({objects[index]['prompt']!r}): no other of its shape")


def _predicted_clean(
    prior: MultiViewPrior,
    latents: Tensor,
    timesteps: Tensor,
    conditions: ViewConditions,
    alphas_cumprod: Tensor,
) -> Tensor:
    """x_0 (V, C, h, w) predicted by the prior for latents at per-view timesteps (no guidance)."""
    prediction, _ = prior_predictions(prior.model, latents, timesteps, conditions, 1.0)
    abar = alphas_cumprod.to(latents.device)[timesteps][:, None, None, None]
    kind = prior.scheduler_config.get("prediction_type", "epsilon")
    return x0_from_epsilon(latents, epsilon_from_prediction(prediction, latents, abar, kind), abar)


@torch.no_grad()
def view_reliance(
    prior: MultiViewPrior,
    objects: Sequence[dict],
    timesteps: Sequence[int] = RELIANCE_TIMESTEPS,
    draws: int = 4,
    seed: int = 0,
) -> list[Reliance]:
    """The errors of every way at each timestep, each object's averaged over ``draws`` noise
    draws; ``objects`` are samples of ``viewdiff.inference.heldout.heldout_objects`` (images
    (N, 3, H, W) in [-1, 1], K, w2c, prompt, category)."""
    if len(objects) < 2:
        raise ValueError(f"{len(objects)} objects: the measure needs at least 2")
    device = prior.device
    latents = [
        encode_images(prior.vae, s["images"][None].to(device), sample=False) for s in objects
    ]  # (N, C, h, w) each
    texts = encode_prompts(prior.text_encoder, prior.tokenizer, [s["prompt"] for s in objects])
    alphas_cumprod = DDPMScheduler.from_config(prior.scheduler_config).alphas_cumprod
    generator = torch.Generator().manual_seed(seed)

    def error(x0: Tensor, views: Tensor) -> float:
        return float(((x0[-1:] - views[-1:]) ** 2).mean())

    results = []
    for t in timesteps:
        errors: dict[str, list[float]] = {way: [] for way in WAYS}
        for i, sample in enumerate(objects):
            views, stand_in = latents[i], latents[_partner(objects, i)]
            n_views, size_hw = views.shape[0], tuple(sample["images"].shape[-2:])
            if n_views < 3:
                raise ValueError(f"{n_views} views per object: the measure needs at least 3")
            K, w2c = sample["K"][None].to(device), sample["w2c"][None].to(device)
            pose = pose_features(K, w2c, size_hw, None)
            every = ViewConditions(texts[i : i + 1], None, K, w2c, pose, size_hw)
            rolled = others_rolled(w2c)
            shuffled = ViewConditions(texts[i : i + 1], None, K, rolled,
                                      pose_features(K, rolled, size_hw, None), size_hw)  # fmt: skip
            last = ViewConditions(texts[i : i + 1], None, K[:, -1:], w2c[:, -1:], pose[:, -1:],
                                  size_hw)  # fmt: skip
            given_steps = torch.tensor([0] * (n_views - 1) + [t], device=device)
            noisy_steps = torch.full((n_views,), t, device=device)
            sums = dict.fromkeys(WAYS, 0.0)
            for _ in range(draws):
                noise = torch.randn(views.shape, generator=generator).to(device)
                noisy = add_noise(views, noise, noisy_steps, alphas_cumprod)  # (N, C, h, w)
                for way, given, cameras in (
                    ("own", views[:-1], every),
                    ("other", stand_in[:-1], every),
                    ("shuffled", views[:-1], shuffled),
                ):
                    inputs = torch.cat([given, noisy[-1:]])
                    x0 = _predicted_clean(prior, inputs, given_steps, cameras, alphas_cumprod)
                    sums[way] += error(x0, views)
                x0 = _predicted_clean(prior, noisy, noisy_steps, every, alphas_cumprod)
                sums["joint"] += error(x0, views)
                x0 = _predicted_clean(prior, noisy[-1:], noisy_steps[-1:], last, alphas_cumprod)
                sums["alone"] += error(x0, views)
            sums["copy"] = draws * float(((views[:-1] - views[-1:]) ** 2).mean((1, 2, 3)).min())
            for way in WAYS:  # copy: the nearest given view, the same for every draw
                errors[way].append(sums[way] / draws)
        results.append(Reliance(t, errors))
    return results
