"""Whether views agree on a backdrop fixed in their world: the backdrop's share of 3D consistency.

The sided toy world's backdrop lies at infinity, so its colour depends on the direction of the
ray alone, whichever camera casts it. The views that are kept become an environment map: every
backdrop pixel (the classifier's foreground rule marks the object) is a sample of it along its
ray. Each held-out backdrop pixel is then predicted from the samples whose rays are nearest in
direction, and the PSNR of those predictions is the measure. A backdrop that turns with the
camera, or one whose tone drifts from view to view, scores low. Objects are masked out, so this
is the part ``viewdiff.toy.quality.consistency_psnr`` (the object alone) leaves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from viewdiff.cameras.conventions import pixel_rays
from viewdiff.inference.trajectory import Trajectory
from viewdiff.toy.classify import foreground
from viewdiff.toy.masks import dilate

NEAREST = 4  # environment samples averaged per prediction
MAX_ANGLE_DEG = 2.0  # a held-out ray with no sample this close is not predicted


def backdrop_consistency_psnr(
    images: Tensor, cameras: Trajectory, held_out: Sequence[int], grow: int = 2
) -> float:
    """PSNR (dB) of the ``held_out`` views' backdrop, predicted by ray direction from the others.

    ``images`` (V, 3, H, W) in [0, 1] at ``cameras``; the object's mask is grown by ``grow``
    pixels so that its edges (and their VAE halo) do not count as backdrop. NaN when no
    held-out backdrop pixel has a sample within ``MAX_ANGLE_DEG``.
    """
    views, _, height, width = images.shape
    _, directions = pixel_rays(cameras.K.double(), cameras.w2c.double(), height, width)
    backdrop = ~dilate(foreground(images), grow)  # (V, H, W)
    colours = images.permute(0, 2, 3, 1)  # (V, H, W, 3)
    kept = [v for v in range(views) if v not in held_out]
    samples = directions[kept][backdrop[kept]].float()  # (S, 3) unit rays
    sample_colours = colours[kept][backdrop[kept]]  # (S, 3)
    errors, count = 0.0, 0
    for view in held_out:
        queries = directions[view][backdrop[view]].float()  # (Q, 3)
        truth = colours[view][backdrop[view]]
        if len(queries) == 0 or len(samples) == 0:
            continue
        for start in range(0, len(queries), 1024):  # (1024, S) cosines at a time
            cosines = queries[start : start + 1024] @ samples.T
            nearest, index = cosines.topk(min(NEAREST, len(samples)), dim=1)
            close = nearest[:, -1] >= math.cos(math.radians(MAX_ANGLE_DEG))
            predicted = sample_colours[index].mean(1)  # (q, 3)
            error = (predicted - truth[start : start + 1024]).square().mean(1)
            errors += float(error[close].sum())
            count += int(close.sum())
    if count == 0:
        return float("nan")
    mse = max(errors / count, 1e-10)
    return 10.0 * math.log10(1.0 / mse)
