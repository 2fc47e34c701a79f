"""Whether a set of views puts a sided toy object's darker side in one 3D place.

Objects of the sided toy world (``viewdiff.data.toy_objects.toy_mark``) have one darker side: a
box face, a band down a can, a cap on a ball, its albedo 0.2-0.28 times the rest. Views of one
consistent object show that side where one place on the object projects, and do not show it
where that place faces away. The check reads the side off the pixels and fits its place:

- ``mark_pixels``: the object's pixels (the classifier's saturation rule) much darker than its
  lit ones. Sides facing away from the light keep the ambient shade (>= 0.55 of lit);
- ``fit_mark``: per view, whether the mark is seen and its centroid; then the place
  ``depth * radius * u`` (``u`` on a Fibonacci sphere, ``radius`` the silhouette's) that explains
  the most views: seen and projecting near the centroid where ``u`` faces the camera, not seen
  where it faces away. ``agreement`` is the fraction of views explained;
- ``one_place``: the views put the side in one 3D place when (nearly) all of them agree.

Views are in the generated views' frame: the object centred at the world origin, OpenCV cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers, project
from viewdiff.toy.classify import foreground, rgb_to_hsv
from viewdiff.toy.masks import dilate, erode
from viewdiff.toy.sphere_points import fibonacci_sphere

# Mark value / lit value (the object's 95th percentile of value). On renders (64 and 32 px, orbits
# at 20-40 degrees) the mark's pixels are <= 0.40 of it, every other object pixel >= 0.58.
MARK_RATIO = 0.45
LIT_QUANTILE = 0.95
MIN_MARK_FRACTION = 0.03  # of the object's pixels: fewer is a sliver or noise, not a seen mark
# u . (unit vector to the camera): above FACING the mark must be seen; below SEEN_FACING it
# cannot be (its centre faces away). In between a sliver may or may not pass MIN_MARK_FRACTION.
FACING = 0.3
SEEN_FACING = 0.0
TOLERANCE = 0.25  # most centroid-to-projection distance of a seen mark, in object radii (pixels)
CANDIDATES = 1024  # directions u
# The mark's centroid lies inside the silhouette's sphere: a box face, a can's side are nearer
# the centre than its radius, and an oblique view sees a cap's near half.
DEPTHS = (0.4, 0.6, 0.8, 1.0)
ONE_PLACE = 0.875  # 7 of 8 views
MIN_SEEN = 2  # one seen view places nothing: any u facing it explains it


@dataclass(frozen=True)
class MarkFit:
    """The place of the darker side that explains the most views, and which views it explains."""

    direction: Tensor  # (3,) unit, world frame (object at the origin)
    agreement: float  # fraction of views that agree with ``direction``; 0.0 if never seen
    seen: list[bool]  # per view: is the mark seen
    agrees: list[bool]  # per view: does that agree with ``direction``


def object_pixels(images: Tensor) -> Tensor:
    """The object (V, H, W) bool of images (V, 3, H, W) in [0, 1]: the saturated pixels, less
    specks narrower than 3 pixels (noise in a dark backdrop can be saturated)."""
    return dilate(erode(foreground(images)))


def mark_pixels(images: Tensor) -> Tensor:
    """The darker side's pixels (V, H, W) bool of images (V, 3, H, W) in [0, 1]."""
    _, _, value = rgb_to_hsv(images)
    # Inside the object only: a soft edge blends the object with a darker backdrop into pixels
    # that are saturated and dark, like the mark.
    inner = erode(foreground(images))
    object_values = torch.where(inner, value, torch.full_like(value, math.nan)).flatten(1)
    lit = torch.nanquantile(object_values, LIT_QUANTILE, dim=1)  # (V,), NaN without an object
    return inner & (value < MARK_RATIO * lit[:, None, None])


def _observe(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per view of images (V, 3, H, W): is the mark seen (V,) bool, its centroid (V, 2) in pixels
    (x right, y down), and the object's radius (V,) in pixels (its area's disc)."""
    masks, marks = object_pixels(images), mark_pixels(images)  # (V, H, W)
    area, mark_area = masks.flatten(1).sum(1).float(), marks.flatten(1).sum(1).float()  # (V,)
    seen = (mark_area > 0) & (mark_area >= MIN_MARK_FRACTION * area)
    height, width = images.shape[-2:]
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=images.device),
        torch.arange(width, dtype=torch.float32, device=images.device),
        indexing="ij",
    )
    weights = marks.float() / mark_area.clamp_min(1.0)[:, None, None]  # (V, H, W)
    centroid = torch.stack([(weights * cols).sum((1, 2)), (weights * rows).sum((1, 2))], -1)
    return seen, centroid, (area / math.pi).sqrt()


def fit_mark(images: Tensor, K: Tensor, w2c: Tensor) -> MarkFit:
    """The place of the darker side that best explains views (V, 3, H, W) in [0, 1] taken by
    cameras K (V, 3, 3), w2c (V, 4, 4) (OpenCV) of an object centred at the world origin."""
    if not len(images) == len(K) == len(w2c):
        raise ValueError(f"{len(images)} views for {len(K)} K and {len(w2c)} w2c")
    device = images.device
    images, K, w2c = images.float(), K.float().to(device), w2c.float().to(device)
    seen, centroid, pixel_radius = _observe(images)
    if not seen.any():
        return MarkFit(torch.zeros(3), 0.0, seen.tolist(), [False] * len(images))

    # The object's radius in world units: its silhouette's, taken back to the camera distance.
    centres = camera_centers(w2c)  # (V, 3)
    distance = centres.norm(dim=-1)  # (V,)
    focal = (K[:, 0, 0] + K[:, 1, 1]) / 2.0
    radius = (pixel_radius / focal * distance)[pixel_radius > 0].median()

    # Every candidate place depth * radius * u, projected into every view.
    u = fibonacci_sphere(CANDIDATES, device).repeat(len(DEPTHS), 1)  # (N, 3), N = depths * C
    depth = torch.tensor(DEPTHS, device=device).repeat_interleave(CANDIDATES)  # (N,)
    projected, _ = project((depth * radius)[:, None] * u, K, w2c)  # (V, N, 2)
    error = (projected - centroid[:, None]).norm(dim=-1).T  # (N, V) pixels
    facing = u @ (centres / distance[:, None]).T  # (N, V)
    close = error <= TOLERANCE * pixel_radius
    agrees = torch.where(seen, (facing >= SEEN_FACING) & close, facing <= FACING)  # (N, V)
    agreement = agrees.float().mean(1)  # (N,)

    # The best agreement; among equals, the place projecting nearest the seen centroids.
    mean_error = (error * seen).sum(1) / seen.sum()  # (N,)
    best = torch.where(agreement == agreement.max(), mean_error, math.inf).argmin()
    return MarkFit(u[best].cpu(), float(agreement[best]), seen.tolist(), agrees[best].tolist())


def one_place(fit: MarkFit, at_least: float = ONE_PLACE, min_seen: int = MIN_SEEN) -> bool:
    """Whether the views put the darker side in one 3D place: at least ``at_least`` of them
    agree with one place, and it is seen in at least ``min_seen`` of them."""
    return fit.agreement >= at_least and sum(fit.seen) >= min_seen
