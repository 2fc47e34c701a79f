"""What the toy world knows, measured: the pieces of ``bench/toy_quality.py`` (and its fast test).

- ``make_toy_shards``: fresh toy objects (a seed of their own) in the CO3Dv2 layout and shards;
- ``consistency_psnr``: fit 3D Gaussians to some views of one object, PSNR on the others: views
  that agree in 3D can be explained by one scene, inconsistent ones cannot;
- ``prior_views``: N posed views generated jointly by the multi-view prior (the toy SD's images,
  one at a time, are ``viewdiff.toy.t2i_training.generate``'s).

Colour and shape accuracy, on real renders and generated images alike, is
``viewdiff.toy.classify.classifier_accuracy``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from viewdiff.config import SampleConfig
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.synthetic import make_synthetic_dataset
from viewdiff.inference.autoregressive import generate_views
from viewdiff.inference.trajectory import Trajectory, orbit_trajectory
from viewdiff.prior.load import MultiViewPrior
from viewdiff.scene.fit import FitConfig, PosedViews, fit
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.toy.backdrop_check import backdrop_consistency_psnr
from viewdiff.toy.classify import foreground
from viewdiff.toy.feature_check import fit_mark, one_place
from viewdiff.toy.images import ToyImages

# A short 3DGS fit for 64 px object views: view-independent colour (SH 0), so that views that
# disagree cannot be explained by view-dependent colour.
CONSISTENCY_FIT = FitConfig(
    iterations=600,
    sh_degree=0,
    densify_from=100,
    densify_until=450,
    densify_interval=50,
    opacity_reset_interval=10_000,
    max_gaussians=4000,
)


# Toy world (a synthetic style) -> how its shards are cut: the plain world's around the object,
# as the shipped prior was trained; the sided world's whole (the object about half the frame).
TOY_CROPS: dict[str, Literal["full", "object"]] = {"toy": "object", "toy_sided": "full"}


def make_toy_shards(
    out: Path, sequences: int, frames: int, seed: int, image_size: int = 64, style: str = "toy"
) -> Path:
    """``sequences`` toy objects per shape, ``frames`` views each, as shards; their folder."""
    frame = max(96, image_size)  # rendered at least at 96 px, stored at image_size
    root = make_synthetic_dataset(
        out / "co3d", None, sequences, frames, (frame, frame), seed, points=500, overwrite=True,
        style=style,
    )  # fmt: skip
    options = ShardOptions(
        image_size=image_size, min_frames=min(5, frames), max_frames=frames, crop=TOY_CROPS[style]
    )
    write_shards(root, out / "shards", options)
    return out / "shards"


def unit(images: ToyImages) -> Tensor:
    """The views (M, 3, H, W) in [0, 1]."""
    return images.images.float() / 255.0


def prior_views(
    prior: MultiViewPrior,
    prompts: Sequence[str],
    cameras: Trajectory,
    settings: SampleConfig,
    seed: int,
) -> Tensor:
    """Views (B, V, 3, H, W) in [0, 1] of each prompt, generated jointly at ``cameras``."""
    seeds = [seed + i for i in range(len(prompts))]
    views = generate_views(prior, list(prompts), cameras, settings, seeds, show_progress=False)
    return (views + 1.0) / 2.0


def toy_orbit(settings: SampleConfig, views: int, image_size: int) -> Trajectory:
    """``views`` cameras on the default orbit of the toy prior's sample settings."""
    return orbit_trajectory(
        views, settings.elevation_deg, settings.radius, image_size, settings.fov_deg
    )


def consistency_psnr(
    images: Tensor,
    cameras: Trajectory,
    held_out: Sequence[int],
    config: FitConfig = CONSISTENCY_FIT,
    seed: int = 0,
) -> float:
    """Mean PSNR (dB) on the ``held_out`` views of Gaussians fitted to the other views.

    ``images`` (V, 3, H, W) in [0, 1] of one object at ``cameras``; the object is separated from
    its grey backdrop by the classifier's saturation rule, and both the fit and the score are
    on the object (backdrop black).
    """
    masks = foreground(images)[:, None].float()
    rows = [i for i in range(len(images)) if i not in held_out]
    chosen = list(held_out)

    def posed(indices: list[int]) -> PosedViews:
        subset = cameras.subset(indices)
        return PosedViews(images[indices], subset.K, subset.w2c, masks[indices])

    generator = torch.Generator().manual_seed(seed)
    scene = GaussianScene.random_in_sphere(2000, 1.0, sh_degree=0, generator=generator)
    result = fit(scene, posed(rows), dataclasses.replace(config, seed=seed), posed(chosen),
                 progress=False)  # fmt: skip
    assert result.test_psnr is not None  # fit scores the test views it was given
    return sum(result.test_psnr) / len(result.test_psnr)


HELD_OUT_VIEWS = (3, 7)  # of 8 views on the orbit: what the consistency measures predict


def consistency_scores(
    images: Tensor, cameras: Trajectory, config: FitConfig, seed: int, world: str
) -> dict[str, float]:
    """3D consistency of 8 views (8, 3, H, W) in [0, 1]: Gaussians fitted to the object (its
    backdrop masked out), and in the sided world the backdrop by ray direction and one 3D place
    for the darker side."""
    scores = {"object_psnr": consistency_psnr(images, cameras, HELD_OUT_VIEWS, config, seed)}
    if world == "toy_sided":
        scores["backdrop_psnr"] = backdrop_consistency_psnr(images, cameras, HELD_OUT_VIEWS)
        mark = fit_mark(images, cameras.K, cameras.w2c)
        scores["mark_agreement"] = mark.agreement
        scores["mark_one_place"] = float(one_place(mark))
    return scores


def averaged(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over objects, and its standard error as ``<figure>_se`` (the
    measure's own noise); NaNs (a backdrop nowhere in reach) are left out."""
    means = {}
    for key in scores[0]:
        values = [s[key] for s in scores if not math.isnan(s[key])]
        mean = sum(values) / len(values) if values else float("nan")
        spread = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0
        means[key] = mean
        means[f"{key}_se"] = math.sqrt(spread / len(values)) if values else float("nan")
    return means
