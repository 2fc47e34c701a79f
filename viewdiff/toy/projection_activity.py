"""Whether a prior's projection layers carry anything 3D: their outputs, read with forward hooks.

For held-out objects each projection layer's output is recorded four times: with every view
noised to one timestep (as in joint generation) at the views' true cameras and at the cameras
rolled by one view (every view lifted and rendered from another's pose); and with the other
views clean and the last noised, at the true cameras and with the other views' cameras rolled.
Per layer:

- ``opacity``: the mean opacity its volume renderer composites (the grid's share of the
  rendered features; the rest is the background's ones);
- ``spatial``: the output's standard deviation over pixels relative to its mean magnitude (a
  layer that outputs one vector everywhere, whatever the grid holds, has ~0);
- ``camera``: the mean change of its output when the cameras are rolled, relative to its mean
  magnitude (a layer whose output does not depend on where the views were seen from has ~0).
  Rolling every camera also turns each view's own rays, so a layer whose output follows its
  view's ray directions alone scores here without carrying anything from the other views;
- ``placement`` and ``grid_placement``: what only the other views can give. The other views
  are given clean and the last is noised (``view_reliance``'s ``own`` and ``shuffled``), and the
  other views' cameras are rolled among them while the last keeps its own. ``placement`` is the
  change of the last view's output, ``grid_placement`` that of the aggregated voxel grid (where
  the views' features first meet in 3D), both relative to their size.

A layer that has learned to use its grid has all of them well above 0. One that the model has
learned to route around (the block's features replaced by a constant) has ``spatial`` and
``camera`` near 0 whatever its opacity; one whose grid ignores where the other views' features
land has ``grid_placement`` near 0; one whose renderer flattens the grid has ``placement`` near
0 above a live grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from viewdiff.cameras.pose_features import pose_features
from viewdiff.diffusion import add_noise
from viewdiff.model.projection import ProjectionLayer
from viewdiff.prior.call import ViewConditions, encode_images, encode_prompts, prior_predictions
from viewdiff.prior.load import MultiViewPrior
from viewdiff.toy.view_reliance import others_rolled


@dataclass(frozen=True)
class LayerActivity:
    """What one projection layer did, averaged over objects."""

    name: str
    opacity: float
    spatial: float
    camera: float
    placement: float
    grid_placement: float


def _recorded(prior: MultiViewPrior, call: ViewConditions, latents: Tensor, t: Tensor) -> dict:
    """Each projection layer's output, aggregated grid and rendered opacity in one prior call."""
    layers = {n: m for n, m in prior.model.named_modules() if isinstance(m, ProjectionLayer)}
    record: dict[str, dict[str, Tensor]] = {name: {} for name in layers}
    handles = []
    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(
            lambda _m, _a, out, name=name: record[name].__setitem__("out", out.detach().float())
        ))  # fmt: skip
        handles.append(layer.aggregator.register_forward_hook(
            lambda _m, _a, out, name=name: record[name].__setitem__("grid", out.detach().float())
        ))  # fmt: skip
        handles.append(layer.renderer.register_forward_hook(
            lambda _m, _a, out, name=name: record[name].__setitem__(
                "opacity", out[:, :, -1].detach().float()
            )
        ))  # fmt: skip
    try:
        prior_predictions(prior.model, latents, t, call, 1.0)
    finally:
        for handle in handles:
            handle.remove()
    return record


@torch.no_grad()
def projection_activity(
    prior: MultiViewPrior, objects: Sequence[dict], timestep: int = 500, seed: int = 0
) -> list[LayerActivity]:
    """Every projection layer's activity over held-out ``objects`` (samples of
    ``viewdiff.inference.heldout.heldout_objects``); [] for a prior without projection layers."""
    if not any(isinstance(m, ProjectionLayer) for m in prior.model.modules()):
        return []
    device = prior.device
    alphas_cumprod = DDPMScheduler.from_config(prior.scheduler_config).alphas_cumprod
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, list[float]] = {}

    def change(a: Tensor, b: Tensor) -> Tensor:
        return (a - b).abs().mean() / a.abs().mean().clamp_min(1e-12)

    for sample in objects:
        views = encode_images(prior.vae, sample["images"][None].to(device), sample=False)
        text = encode_prompts(prior.text_encoder, prior.tokenizer, [sample["prompt"]])
        steps = torch.full((views.shape[0],), timestep, device=device)
        noise = torch.randn(views.shape, generator=generator).to(device)
        noisy = add_noise(views, noise, steps, alphas_cumprod)
        given, given_steps = torch.cat([views[:-1], noisy[-1:]]), steps.clone()
        given_steps[:-1] = 0  # the other views clean, the last noised
        size_hw = tuple(sample["images"].shape[-2:])
        K, w2c = sample["K"][None].to(device), sample["w2c"][None].to(device)
        records = []
        for cameras, latents, t in (
            (w2c, noisy, steps),
            (w2c.roll(1, 1), noisy, steps),
            (w2c, given, given_steps),
            (others_rolled(w2c), given, given_steps),
        ):
            pose = pose_features(K, cameras, size_hw, None)
            call = ViewConditions(text, None, K, cameras, pose, size_hw)
            records.append(_recorded(prior, call, latents, t))
        true, rolled, own, shuffled = records
        for name, record in true.items():
            out, magnitude = record["out"], record["out"].abs().mean().clamp_min(1e-12)
            spatial = out.flatten(2).std(dim=-1).mean() / magnitude
            values = (
                record["opacity"].mean(),
                spatial,
                change(out, rolled[name]["out"]),
                change(own[name]["out"][-1], shuffled[name]["out"][-1]),  # the last view
                change(own[name]["grid"], shuffled[name]["grid"]),
            )
            totals = sums.setdefault(name, [0.0] * len(values))
            for i, value in enumerate(values):
                totals[i] += float(value) / len(objects)
    return [LayerActivity(name, *values) for name, values in sums.items()]
