"""The darker-side check (viewdiff/toy/feature_check.py) on exact renders of sided toy objects."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.data.raycast import SyntheticObject, render_object
from viewdiff.data.synthetic import sequence_object
from viewdiff.toy.feature_check import MarkFit, fit_mark, mark_pixels, one_place
from viewdiff.toy.sphere_points import fibonacci_sphere

SIZE, VIEWS = 64, 8
K = intrinsics_from_fov(45.0, SIZE, SIZE).expand(VIEWS, 3, 3)  # (V, 3, 3)
W2C = orbit(VIEWS, elevation_deg=28.0, radius=3.0)  # (V, 4, 4): the object fills about half
SHAPES = ("ball", "box", "can")


def at_origin(
    category: str, index: int, seed: int = 0, style: str = "toy_sided"
) -> SyntheticObject:
    """A toy object placed at the world origin, its frame the world's."""
    return dataclasses.replace(
        sequence_object(category, index, seed, style), object_to_world=np.eye(4)
    )


def views(obj: SyntheticObject) -> torch.Tensor:
    """Renders (V, 3, H, W) in [0, 1] of an object from the orbit."""
    images = [render_object(obj, K[0].numpy(), w2c.numpy(), (SIZE, SIZE))[0] for w2c in W2C]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def degrees_between(a: np.ndarray, b: np.ndarray) -> float:
    """The angle (degrees) between two unit directions (3,)."""
    return float(np.degrees(np.arccos(np.clip(a @ b, -1.0, 1.0))))


@pytest.fixture(scope="module")
def sided() -> dict[tuple[str, int], tuple[SyntheticObject, torch.Tensor]]:
    """6 sided objects per shape and their orbit renders."""
    objects = {(shape, index): at_origin(shape, index) for shape in SHAPES for index in range(6)}
    return {key: (obj, views(obj)) for key, obj in objects.items()}


def test_true_sets_place_the_mark_where_it_is(sided: dict) -> None:
    for (shape, index), (obj, images) in sided.items():
        fit = fit_mark(images, K, W2C)
        assert fit.agreement >= 0.875 and one_place(fit), (shape, index, fit)
        # The true direction is the box's face normal, the can band's and the ball cap's centre.
        error = degrees_between(fit.direction.numpy(), obj.mark.direction)
        assert error < 30.0, (shape, index, fit)


def test_soft_views_still_agree(sided: dict) -> None:
    """Generated views are soft: a 3 x 3 blur moves neither the mark nor the verdict."""
    for (shape, index), (obj, images) in sided.items():
        blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        fit = fit_mark(blurred, K, W2C)
        assert one_place(fit), (shape, index, fit)
        error = degrees_between(fit.direction.numpy(), obj.mark.direction)
        assert error < 30.0, (shape, index, fit)


def mixed_sets(count: int) -> list[torch.Tensor]:
    """``count`` view sets whose v-th view is of a different object, marks 30+ degrees apart."""
    pool = [at_origin(shape, index, seed=1) for shape in SHAPES for index in range(10)]
    renders = [views(obj) for obj in pool]
    generator = np.random.default_rng(0)
    sets = []
    for _ in range(count):
        chosen: list[int] = []
        for i in generator.permutation(len(pool)):
            marks = [pool[j].mark.direction for j in chosen]
            if all(degrees_between(pool[i].mark.direction, mark) > 30.0 for mark in marks):
                chosen.append(i)
        assert len(chosen) >= VIEWS, "too few objects with marks apart for a mixed set"
        sets.append(torch.stack([renders[i][v] for v, i in enumerate(chosen[:VIEWS])]))
    return sets


def test_mixed_sets_do_not_agree() -> None:
    """Each view from another object: no one place explains them. Measured: mean agreement 0.69
    (true sets: 1.0), 1 set of 12 passing ``one_place``; a set that shows the mark in few views
    can pass by chance."""
    fits = [fit_mark(images, K, W2C) for images in mixed_sets(12)]
    assert np.mean([fit.agreement for fit in fits]) < 0.8
    assert np.mean([one_place(fit) for fit in fits]) <= 0.5


def test_no_mark_places_nothing() -> None:
    for shape in SHAPES:
        fit = fit_mark(views(at_origin(shape, 0, style="toy")), K, W2C)
        assert fit.agreement == 0.0 and not any(fit.seen) and not one_place(fit), (shape, fit)


def test_mark_pixels_are_the_mark(sided: dict) -> None:
    for (shape, index), (obj, images) in sided.items():
        unmarked = views(dataclasses.replace(obj, mark=None))
        truth = (images - unmarked).abs().sum(1) > 0  # (V, H, W): where the mark changed pixels
        found = mark_pixels(images)
        iou = (truth & found).sum() / (truth | found).sum()
        assert iou > 0.7, (shape, index, float(iou))
        # The unmarked object, lit from the same side: its unlit sides are no mark.
        assert not mark_pixels(unmarked).any(), (shape, index)


def test_one_place_needs_agreement_and_two_seen_views() -> None:
    direction = torch.tensor([1.0, 0.0, 0.0])
    assert one_place(MarkFit(direction, 0.875, [True, True] + [False] * 6, [True] * 7 + [False]))
    assert not one_place(MarkFit(direction, 0.75, [True] * 8, [True] * 6 + [False] * 2))
    assert not one_place(MarkFit(direction, 1.0, [True] + [False] * 7, [True] * 8))


def test_fibonacci_sphere_is_even() -> None:
    points = fibonacci_sphere(1024)
    assert torch.allclose(points.norm(dim=-1), torch.ones(1024), atol=1e-5)
    assert points.mean(0).norm() < 0.01  # no side favoured
    nearest = (points @ points.T - 2.0 * torch.eye(1024)).amax(1)  # cosine to the nearest other
    assert torch.rad2deg(torch.acos(nearest)).max() < 8.0  # every point has a close neighbour


def test_mismatched_cameras_are_refused(sided: dict) -> None:
    _, images = sided["ball", 0]
    with pytest.raises(ValueError, match="views"):
        fit_mark(images, K[:4], W2C)
