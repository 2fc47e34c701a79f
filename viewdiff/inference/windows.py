"""The sliding-window plan of autoregressive generation: which views each window makes and sees.

ViewDiff generates more views than fit in one batch autoregressively (Sec. 3.4 of the paper;
the reference's ``test.py --sliding_window``): a first batch spread all around the object, then
windows of new views, each denoised jointly with already generated views given clean (t = 0) as
image conditions, until every requested camera has a view.

Views are numbered in one pool: the M given input views first (0 .. M-1), then the V cameras of
the trajectory (M .. M+V-1). A plan is a list of windows; each names the trajectory cameras it
generates (``targets``, pool numbers) and the available views it sees clean (``conditions``).
Our choice of conditions differs from the reference's, which keeps the first full batch plus
half of the latest ones: here every window sees the given inputs first (they are real), then
the generated views nearest to its cameras (smallest angle around the box centre), up to
``max_conditions``. Nearest neighbours on both sides of a window carry the appearance along
the trajectory and let it close the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers


@dataclass(frozen=True)
class Window:
    """One denoising batch: views generated (pool numbers) and views given clean."""

    targets: tuple[int, ...]
    conditions: tuple[int, ...]


def _directions(w2c: Tensor) -> Tensor:
    """Unit vectors (V, 3) from the object box centre to every camera."""
    return torch.nn.functional.normalize(camera_centers(w2c.double()), dim=-1)


def spread_indices(w2c: Tensor, count: int) -> list[int]:
    """``count`` of the cameras (V, 4, 4), evenly spaced in azimuth order from the first one."""
    centres = camera_centers(w2c.double())
    azimuth = torch.atan2(centres[:, 1], centres[:, 0])
    order = torch.argsort((azimuth - azimuth[0]) % (2 * torch.pi)).tolist()
    total = len(order)
    return sorted(order[(i * total) // count] for i in range(count))


def nearest_conditions(
    directions: Tensor, available: list[int], targets: list[int], n_given: int, limit: int
) -> tuple[int, ...]:
    """Up to ``limit`` available views: given ones first, then the nearest to any target."""
    if not available or limit <= 0:
        return ()
    cosine = directions[available] @ directions[targets].T  # (available, targets)
    closeness = cosine.max(dim=1).values.tolist()
    ranked = sorted(
        zip(available, closeness, strict=True), key=lambda item: (item[0] >= n_given, -item[1])
    )
    return tuple(sorted(index for index, _ in ranked[:limit]))


def plan_windows(
    target_w2c: Tensor,
    given_w2c: Tensor | None = None,
    window_views: int = 10,
    max_conditions: int = 20,
) -> list[Window]:
    """The windows that give every one of the V target cameras (V, 4, 4) a view.

    ``given_w2c`` (M, 4, 4) are the cameras of given input views (or None); ``window_views``
    is the number of new views per window; ``max_conditions`` the most views a window sees clean.
    The first window spreads its views around 360 degrees; later ones follow the trajectory.
    """
    if window_views < 1:
        raise ValueError(f"window_views must be at least 1, got {window_views}")
    if max_conditions < 0:
        raise ValueError(f"max_conditions must be >= 0, got {max_conditions}")
    n_given = 0 if given_w2c is None else given_w2c.shape[0]
    n_targets = target_w2c.shape[0]
    cameras = target_w2c if given_w2c is None else torch.cat([given_w2c, target_w2c.to(given_w2c)])
    directions = _directions(cameras)
    if n_targets <= window_views:
        first = list(range(n_targets))
    else:
        first = spread_indices(target_w2c, window_views)
    remaining = [i for i in range(n_targets) if i not in set(first)]
    chunks = [first] + [
        remaining[start : start + window_views] for start in range(0, len(remaining), window_views)
    ]
    available, windows = list(range(n_given)), []
    for chunk in chunks:
        targets = [n_given + i for i in chunk]
        conditions = nearest_conditions(directions, available, targets, n_given, max_conditions)
        windows.append(Window(tuple(targets), conditions))
        available += targets
    return windows
