"""The edit region: where in each view the edit may act, and how it is traced from the prior.

Forward, Gaussians -> views: the edit masks are the rendered opacity of the selected Gaussians
(``edit_masks``; the whole object when none are selected), checked non-empty (``region_masks``)
and brought to latent resolution for local blending (``latent_masks``).

Backward, views -> Gaussians: TrAME and GaussianEditor trace the edited object's Gaussians from
2D masks (SAM there); here the evidence is the prior's own cross-attention to the changed words
(``attention_maps``: ``AttentionRecord`` in one dual call per batch at the first trajectory step),
each view's map normalised to [0, 1]. Every Gaussian's centre is projected into every view it
falls in; a Gaussian is selected when the mean map value at its projections reaches
``threshold`` times the highest such mean (``lift_region``: voting over views; occlusion is not
modelled: a hidden Gaussian votes with what hides it).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from viewdiff.inference.trajectory import Trajectory
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.scene.render import render
from viewdiff.scene.sh import rgb_to_sh0
from viewdiff.trame.attention_control import AttentionRecord, changed_words
from viewdiff.trame.ddcm import noisy_pair
from viewdiff.trame.dual_prior import DualBranchPrior


def edit_masks(scene: GaussianScene, cameras: Trajectory, selected: Tensor | None) -> Tensor:
    """Per view (V, 1, H, W) in [0, 1]: the rendered opacity of the selected Gaussians (all when
    None), which is where the edit may act."""
    height, width = cameras.image_size_hw
    weights = torch.ones(scene.num_gaussians, device=scene.means.device)
    if selected is not None:
        weights = selected.to(weights)
    # Render the selection as colour: white Gaussians where selected, black elsewhere.
    marked = dataclasses.replace(
        scene.detach(),
        f_dc=rgb_to_sh0(weights[:, None].expand(-1, 3)),
        f_rest=scene.f_rest.detach()[:, :0],
    )
    masks = []
    with torch.no_grad():
        for v in range(len(cameras)):
            out = render(marked, cameras.K[v], cameras.w2c[v], height, width, 0.0)
            masks.append(out.rgb[:1].clamp(0, 1))
    return torch.stack(masks)


def object_masks(scene: GaussianScene, cameras: Trajectory) -> Tensor:
    """The whole scene's edit masks (V, 1, H, W); a ValueError naming the cameras it is not in
    view of."""
    masks = edit_masks(scene, cameras, None)
    coverage = masks.flatten(1).amax(1)  # (V,)
    unseen = torch.nonzero(coverage < 0.5).flatten().tolist()
    if unseen:
        raise ValueError(
            f"the scene is not in view of cameras {unseen} of {len(cameras)}: are the scene "
            "and the cameras of the same scene?"
        )
    return masks


def region_masks(
    scene: GaussianScene, cameras: Trajectory, selected: Tensor | None, whole: Tensor
) -> Tensor:
    """The edit masks (V, 1, H, W) of the ``selected`` Gaussians (G,) bool of ``scene`` (None:
    ``whole``, the object's masks); a ValueError when the region is empty."""
    if selected is not None and not bool(selected.any()):
        raise ValueError("the edit region holds no Gaussian")
    masks = whole if selected is None else edit_masks(scene, cameras, selected)
    if float(masks.amax()) < 0.5:
        raise ValueError("the edit region is empty in every view (no Gaussian renders there)")
    return masks


def latent_masks(masks: Tensor, latents: Tensor, grow: int) -> Tensor:
    """Edit masks (V, 1, H, W) at the resolution (and dtype) of ``latents`` (V, C, h, w): 0 or 1,
    grown by ``grow`` latent pixels."""
    h, w = latents.shape[-2:]
    masks = torch.nn.functional.adaptive_max_pool2d(masks, (h, w))
    masks = (masks > 0.5).to(latents)
    if grow:
        masks = torch.nn.functional.max_pool2d(masks, 2 * grow + 1, stride=1, padding=grow)
    return masks


def attention_maps(
    prior: DualBranchPrior, src0: Tensor, words: tuple[list[int], list[int]] | None = None
) -> Tensor:
    """Per edit view (V, H, W) in [0, 1]: the prior's cross-attention to the changed words
    (source words in the source branch, target words in the target branch; ``words``
    overrides them), from one dual call per batch on the latents src0 (V, C, h, w) noised to
    the first trajectory step."""
    tokenizer = prior.editing.tokenizer
    source_words, target_words = words or (
        changed_words(tokenizer, prior.prompt, prior.source_prompt),
        changed_words(tokenizer, prior.source_prompt, prior.prompt),
    )
    if not source_words and not target_words:
        raise ValueError(
            f"{prior.source_prompt!r} and {prior.prompt!r} share every word: no edit region "
            "can be traced from changed words"
        )
    k = prior.config.start
    alpha_bar = prior.alpha_bar(k)
    generator = torch.Generator().manual_seed(prior.config.seed + 2)
    noise = torch.randn(src0.shape, generator=generator).to(src0)
    maps = torch.zeros(src0.shape[0], *src0.shape[-2:])
    for views, updated in prior.plan.batches():
        record = AttentionRecord(source_words, target_words, (src0.shape[-2], src0.shape[-1]))
        x_s, x_t = noisy_pair(src0[views], src0[views], noise[views], alpha_bar)
        prior.predictions(views, x_s, x_t, k, record)
        keep = [views.index(v) for v in updated]
        maps[updated] = record.mean_map()[keep]
    size = prior.cameras.image_size_hw
    upsampled = torch.nn.functional.interpolate(maps[:, None], size=size, mode="bilinear")
    return normalise_maps(upsampled[:, 0])


def project_points(points: Tensor, cameras: Trajectory) -> tuple[Tensor, Tensor]:
    """Pixel coordinates (V, G, 2) of points (G, 3) in every view, and whether each lands in
    front of the camera and inside the image (V, G)."""
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], 1)  # (G, 4)
    camera = torch.einsum("vij,gj->vgi", cameras.w2c.to(points), homogeneous)[..., :3]
    pixels = torch.einsum("vij,vgj->vgi", cameras.K.to(points), camera)
    depth = pixels[..., 2:].clamp_min(1e-6)
    uv = pixels[..., :2] / depth
    height, width = cameras.image_size_hw
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    return uv, inside & (camera[..., 2] > 1e-3)


def normalise_maps(maps: Tensor) -> Tensor:
    """Maps (V, H, W) scaled to [0, 1] per view (min to 0, max to 1)."""
    low = maps.flatten(1).amin(1)[:, None, None]
    high = maps.flatten(1).amax(1)[:, None, None]
    return (maps - low) / (high - low).clamp_min(1e-12)


def lift_region(
    maps: Tensor, points: Tensor, cameras: Trajectory, threshold: float = 0.5
) -> Tensor:
    """Gaussians (G,) bool whose centres' mean map value over the views they fall in reaches
    ``threshold`` times the best Gaussian's; maps (V, H, W) in [0, 1] at the cameras' size."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"the region threshold must be in (0, 1), got {threshold}")
    if maps.shape != (len(cameras), *cameras.image_size_hw):
        raise ValueError(
            f"maps {tuple(maps.shape)} do not match {len(cameras)} views of {cameras.image_size_hw}"
        )
    uv, inside = project_points(points.detach().float(), cameras)
    height, width = cameras.image_size_hw
    col = uv[..., 0].floor().long().clamp(0, width - 1)
    row = uv[..., 1].floor().long().clamp(0, height - 1)
    views = torch.arange(len(cameras))[:, None].expand_as(col)
    values = maps.to(points.device)[views, row, col] * inside  # (V, G)
    seen = inside.sum(0)
    score = values.sum(0) / seen.clamp_min(1)
    return (score >= threshold * score.max()) & (seen > 0)
