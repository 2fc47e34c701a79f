"""Novel-view synthesis on held-out objects: given ``known`` true views, generate the others.

Objects stream from a held-out shard set (``viewdiff.data.stream``, finite mode: every sample
once, in a seeded order), N views each (``data.n_views`` views drawn as ``data.view_sampling``
says, with their masks). The first ``known`` views are given clean; the rest are generated at
their true cameras by ``generate_views`` and compared with the true views
(``viewdiff.inference.evaluate``). A picture per object shows the true views above the
generated ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from viewdiff.config import DataConfig, SampleConfig
from viewdiff.data.stream import build_loader, shard_urls
from viewdiff.inference.autoregressive import generate_views
from viewdiff.inference.evaluate import ObjectResult, view_metrics
from viewdiff.inference.trajectory import Trajectory
from viewdiff.prior.load import MultiViewPrior
from viewdiff.visualize import image_grid, to_pil

COMPARISONS_DIR = "compare"
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def check_heldout_shards(data: DataConfig) -> list[str]:
    """The shard URLs of ``data.shards``, refusing local shard files that do not exist."""
    urls = shard_urls(data.shards, data.image_size, data.categories)
    # A brace pattern expands whether or not its files exist: look before streaming from it.
    local = [url for url in urls if not _URL_SCHEME.match(url)]  # not pipe:, http://, s3://
    missing = [url for url in local if not Path(url).is_file()]
    if missing:
        raise ValueError(f"shard not found: {missing[0]} ({len(missing)} of {len(urls)} missing)")
    return urls


def heldout_objects(data: DataConfig, seed: int, max_objects: int | None) -> Iterator[dict]:
    """Samples (one object each: images, masks, K, w2c, prompt, ...) of the held-out shards."""
    loader = build_loader(data, batch_size=1, seed=seed, resampled=False, num_workers=0)
    for count, batch in enumerate(loader):
        if max_objects is not None and count >= max_objects:
            return
        yield {key: value[0] for key, value in batch.items() if key not in ("skipped", "worker")}


def comparison_picture(truth: Tensor, generated: Tensor, known: int) -> Image.Image:
    """True views (N, 3, H, W) above the given + generated ones, one column per view."""
    row = torch.cat([truth[:known], generated])
    return image_grid([to_pil(view) for view in [*truth, *row]], columns=truth.shape[0])


def evaluate_object(
    prior: MultiViewPrior, sample: dict, known: int, settings: SampleConfig, seed: int
) -> tuple[ObjectResult, Tensor]:
    """Generate the views after the first ``known`` of one object; its metrics and the views."""
    images, masks = sample["images"], sample["masks"]  # (N, 3, H, W), (N, 1, H, W)
    size_hw = tuple(images.shape[-2:])
    cameras = Trajectory(sample["K"], sample["w2c"], size_hw)
    targets = cameras.subset(list(range(known, images.shape[0])))
    given = cameras.subset(list(range(known))) if known else None
    generated = generate_views(
        prior,
        [sample["prompt"]],
        targets,
        settings,
        [seed],
        given_images=images[:known] if known else None,
        given_cameras=given,
        show_progress=False,
    )[0]
    frames = sample["frame_numbers"].tolist()
    result = ObjectResult(
        key=sample["key"],
        category=sample["category"],
        sequence=sample["sequence"],
        prompt=sample["prompt"],
        known_frames=frames[:known],
        generated_frames=frames[known:],
        views=view_metrics(generated, images[known:], masks[known:]),
    )
    return result, generated


def evaluate_heldout(
    prior: MultiViewPrior,
    data: DataConfig,
    known: int,
    settings: SampleConfig,
    out_dir: str | Path,
    max_objects: int | None = None,
    seed: int = 0,
) -> list[ObjectResult]:
    """Evaluate every held-out object (up to ``max_objects``); pictures go to out_dir/compare/."""
    if not 0 <= known < data.n_views:
        raise ValueError(f"--known must be in [0, {data.n_views}) for {data.n_views} views")
    folder = Path(out_dir) / COMPARISONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    objects = heldout_objects(data, seed, max_objects)
    for sample in tqdm(objects, desc="held-out objects", total=max_objects, unit="object"):
        result, generated = evaluate_object(prior, sample, known, settings, seed)
        results.append(result)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", result.key)
        comparison_picture(sample["images"], generated, known).save(folder / f"{name}.png")
    if not results:
        raise ValueError(f"{data.shards}: no held-out object to evaluate")
    return results
