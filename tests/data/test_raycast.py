"""Ray casting: closed-form hits of each primitive, z-depth renders, distinguishable sides."""

import numpy as np
import pytest
import torch

from viewdiff.cameras.normalization import normalize_w2c
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.data.raycast import Primitive, SyntheticObject, render_object, trace
from viewdiff.data.synthetic_objects import CATEGORIES, make_object

SIZE_HW = (72, 96)  # non-square on purpose


def _object(*primitives: Primitive) -> SyntheticObject:
    """An object of the given primitives, its object frame the world, grey background."""
    background = np.array([[0.3] * 3, [0.6] * 3, [0.2] * 3, [0.8] * 3])
    return SyntheticObject("test", primitives, "a test object", np.eye(4), background, 0.25)


def _primitive(kind: str, centre: tuple, size: tuple) -> Primitive:
    return Primitive(kind, np.array(centre, float), np.array(size, float), np.full((6, 3), 0.5))


@pytest.mark.parametrize(
    ("prim", "origin", "direction", "t", "normal", "face"),
    [
        (_primitive("box", (0, 0, 0), (1, 2, 3)), (5, 0, 0), (-1, 0, 0), 4.0, (1, 0, 0), 0),
        (_primitive("box", (0, 0, 0), (1, 2, 3)), (0, 0, 10), (0, 0, -2), 3.5, (0, 0, 1), 4),
        (_primitive("box", (0, 0, 0), (1, 2, 3)), (0, -9, 1), (0, 1, 0), 7.0, (0, -1, 0), 3),
        (_primitive("cylinder", (0, 0, 1), (1, 1, 2)), (5, 0, 1), (-1, 0, 0), 4.0, (1, 0, 0), 0),
        (_primitive("cylinder", (0, 0, 1), (1, 1, 2)), (0.5, 0, 10), (0, 0, -1), 7.0, (0, 0, 1), 1),
        (_primitive("cylinder", (0, 0, 1), (1, 1, 2)), (0, 0.5, -4), (0, 0, 1), 3.0, (0, 0, -1), 2),
        (_primitive("sphere", (0, 0, 0), (1, 1, 1)), (0, 0, 5), (0, 0, -0.5), 8.0, (0, 0, 1), 0),
    ],
)
def test_rays_meet_primitives_where_the_formulas_say(prim, origin, direction, t, normal, face):
    """Entry parameter in units of the (not unit) direction, outward normal and face index."""
    origins = np.array([origin] * 2, float)
    directions = np.array([direction, np.negative(direction)], float)  # second: pointing away
    hit_t, index, normals, faces = trace(_object(prim), origins, directions)
    assert hit_t[0] == pytest.approx(t) and index[0] == 0 and faces[0] == face
    np.testing.assert_allclose(normals[0], normal, atol=1e-12)
    assert np.isinf(hit_t[1]) and index[1] == -1


def test_nearest_primitive_wins_and_one_around_the_origin_is_missed():
    """Of two stacked primitives the nearer hit counts; rays only enter primitives, so one that
    holds the ray's origin is not hit."""
    obj = _object(
        _primitive("box", (0, 0, 0), (1, 1, 1)), _primitive("sphere", (0, 0, 2), (1, 1, 1))
    )
    t, index, _, _ = trace(obj, np.array([[0, 0, 10.0], [0, 0, 1.5]]), np.array([[0, 0, -1.0]] * 2))
    assert list(index) == [1, 0] and t[0] == pytest.approx(7.0) and t[1] == pytest.approx(0.5)


def test_render_depth_is_z_depth_of_object_then_ground_else_zero():
    """Looking straight down at a box: its top face has one z-depth across the image (not ray
    length), the ground disc under it the depth of its bottom, the backdrop beyond depth 0."""
    obj = _object(_primitive("box", (0, 0, 0), (0.5, 0.5, 0.5)))
    K = np.array([[16.0, 0.0, 15.5], [0.0, 16.0, 15.5], [0.0, 0.0, 1.0]])  # 90 degree view
    w2c = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]])  # at z=5, down
    image, mask, depth = render_object(obj, K, w2c, (32, 32))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and depth.dtype == np.float32
    # The top face (half-width 0.5 at depth 4.5) covers pixel centres 14..17 of each axis.
    expected = np.zeros((32, 32), dtype=bool)
    expected[14:18, 14:18] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(depth[mask], 4.5, rtol=1e-6)
    assert depth[8, 15] == pytest.approx(5.5) and depth[15, 8] == pytest.approx(5.5)  # ground
    assert depth[0, 0] == 0.0 and depth[31, 31] == 0.0  # beyond the ground disc: backdrop


def _colour_histogram(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Normalised 64-bin histogram of the object's colours (4 levels per channel)."""
    levels = image[mask].astype(int) // 64
    counts = np.bincount(levels[:, 0] * 16 + levels[:, 1] * 4 + levels[:, 2], minlength=64)
    return counts / counts.sum()


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opposite_sides_look_different(category, seed):
    obj = make_object(category, np.random.default_rng(seed))
    K = intrinsics_from_fov(50.0, *SIZE_HW).double().numpy()
    cameras = orbit(2, elevation_deg=20.0, radius=3.5, start_azimuth_deg=30.0, dtype=torch.float64)
    front, back = normalize_w2c(cameras, torch.from_numpy(obj.object_to_world)).numpy()
    (image_a, mask_a, _), (image_b, mask_b, _) = (
        render_object(obj, K, view, SIZE_HW) for view in (front, back)
    )
    assert mask_a.sum() > 300 and mask_b.sum() > 300
    distance = np.abs(_colour_histogram(image_a, mask_a) - _colour_histogram(image_b, mask_b))
    assert distance.sum() > 0.5  # of at most 2: the two sides share few colours
    again = render_object(obj, K, front, SIZE_HW)[0]
    assert np.array_equal(again, image_a)
