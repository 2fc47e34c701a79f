"""Camera conventions: CO3D/PyTorch3D NDC <-> OpenCV pixels, crops, rays, orbits, normalisation."""

import math

import pytest
import torch

from viewdiff.cameras import conventions as cam
from viewdiff.cameras.normalization import normalize_w2c, scene_normalization
from viewdiff.cameras.orbits import (
    cartesian_to_spherical,
    intrinsics_from_fov,
    orbit,
    spherical_to_cartesian,
)
from viewdiff.cameras.pose_features import POSE_FEATURE_DIM, intensity_stats, pose_features

HEIGHT, WIDTH = 300, 400  # non-square on purpose: NDC conventions differ only then


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    """A uniformly random proper rotation (3, 3), float64."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def random_co3d_camera(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """PyTorch3D R, T and NDC focal length / principal point of a plausible camera."""
    R = random_rotation(generator)
    T = torch.tensor([0.1, -0.2, 5.0], dtype=torch.float64) + 0.3 * torch.randn(
        3, generator=generator, dtype=torch.float64
    )
    focal = torch.tensor([2.1, 2.3], dtype=torch.float64)
    principal = torch.tensor([0.05, -0.1], dtype=torch.float64)
    return R, T, focal, principal


def points_in_front(R: torch.Tensor, T: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """World points (P, 3) that lie in front of the PyTorch3D camera (R, T)."""
    view = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    view[:, 2] = view[:, 2].abs() + 2.0
    return (view - T) @ R.T  # inverse of X_view = X_world @ R + T


def pytorch3d_project(points, R, T, focal, principal, intrinsics_format):
    """PyTorch3D's own path, written from its documentation: view space, NDC, then pixels."""
    view = points @ R + T  # row vectors, x left, y up
    ndc = focal * view[:, :2] / view[:, 2:3] + principal
    if intrinsics_format == "ndc_isotropic":
        half = torch.tensor([min(HEIGHT, WIDTH) / 2.0] * 2, dtype=torch.float64)
    else:
        half = torch.tensor([WIDTH / 2.0, HEIGHT / 2.0], dtype=torch.float64)
    corner_anchored = torch.tensor([WIDTH / 2.0, HEIGHT / 2.0], dtype=torch.float64) - ndc * half
    return corner_anchored - 0.5  # OpenCV: pixel centres at integer coordinates


@pytest.mark.parametrize("intrinsics_format", cam.INTRINSICS_FORMATS)
def test_co3d_and_opencv_project_points_to_the_same_pixels(intrinsics_format):
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        R, T, focal, principal = random_co3d_camera(generator)
        points = points_in_front(R, T, generator)
        K, w2c = cam.co3d_to_opencv(R, T, focal, principal, (HEIGHT, WIDTH), intrinsics_format)
        uv, depth = cam.project(points, K, w2c)
        expected = pytorch3d_project(points, R, T, focal, principal, intrinsics_format)
        torch.testing.assert_close(uv, expected, atol=1e-6, rtol=0)
        assert torch.all(depth > 0)


def pytorch3d_look_at(eye: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch3D's look_at_view_transform towards the origin, as its documentation defines it."""
    z_axis = torch.nn.functional.normalize(-eye, dim=0)
    x_axis = torch.nn.functional.normalize(torch.linalg.cross(up, z_axis), dim=0)
    y_axis = torch.linalg.cross(z_axis, x_axis)
    R = torch.stack([x_axis, y_axis, z_axis], dim=1)  # columns: camera axes in world
    return R, -R.T @ eye


def test_pytorch3d_cameras_keep_up_up_and_left_left():
    # A PyTorch3D camera on -z looking at the origin with +y up sees +x on its left
    # (PyTorch3D's view x axis points left), +y above the centre.
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    R, T = pytorch3d_look_at(torch.tensor([0.0, 0.0, -5.0], dtype=torch.float64), up)
    K, w2c = cam.co3d_to_opencv(
        R, T, torch.tensor([2.0, 2.0]).double(), torch.zeros(2).double(), (HEIGHT, WIDTH)
    )
    points = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    uv, _ = cam.project(points, K, w2c)
    torch.testing.assert_close(uv[0], torch.tensor([WIDTH / 2 - 0.5, HEIGHT / 2 - 0.5]).double())
    assert uv[1, 0] < uv[0, 0], "+x should appear left of the centre"
    assert uv[2, 1] < uv[0, 1], "+y (up) should appear above the centre"


@pytest.mark.parametrize("intrinsics_format", cam.INTRINSICS_FORMATS)
def test_co3d_opencv_round_trip(intrinsics_format):
    generator = torch.Generator().manual_seed(1)
    R, T, focal, principal = random_co3d_camera(generator)
    K, w2c = cam.co3d_to_opencv(R, T, focal, principal, (HEIGHT, WIDTH), intrinsics_format)
    back = cam.opencv_to_co3d(K, w2c, (HEIGHT, WIDTH), intrinsics_format)
    for got, expected in zip(back, (R, T, focal, principal), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_ndc_formats_differ_only_on_non_square_images():
    focal, principal = torch.tensor([2.0, 2.0]), torch.tensor([0.1, 0.2])
    square = [
        cam.ndc_to_pixel_intrinsics(focal, principal, (64, 64), f) for f in cam.INTRINSICS_FORMATS
    ]
    torch.testing.assert_close(square[0], square[1])
    wide = [
        cam.ndc_to_pixel_intrinsics(focal, principal, (64, 128), f) for f in cam.INTRINSICS_FORMATS
    ]
    assert wide[0][0, 0] == 64.0 and wide[1][0, 0] == 128.0  # isotropic: scale of the short side


def test_unknown_intrinsics_format_is_an_error():
    with pytest.raises(ValueError, match="ndc_pixels"):
        cam.ndc_to_pixel_intrinsics(torch.ones(2), torch.zeros(2), (10, 10), "ndc_pixels")


def test_skewed_intrinsics_cannot_become_ndc():
    K = torch.tensor([[100.0, 1.0, 50.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="skew"):
        cam.pixel_to_ndc_intrinsics(K, (100, 100))


def test_pytorch3d_extrinsics_round_trip_batched():
    generator = torch.Generator().manual_seed(2)
    R = torch.stack([random_rotation(generator) for _ in range(4)]).reshape(2, 2, 3, 3)
    T = torch.randn(2, 2, 3, generator=generator, dtype=torch.float64)
    w2c = cam.pytorch3d_to_w2c(R, T)
    assert w2c.shape == (2, 2, 4, 4)
    R_back, T_back = cam.w2c_to_pytorch3d(w2c)
    torch.testing.assert_close(R_back, R)
    torch.testing.assert_close(T_back, T)


def single_ray(K, w2c, u, v):
    """Direction (unit depth) of the ray through the continuous pixel position (u, v)."""
    direction = torch.linalg.inv(K) @ torch.tensor([u, v, 1.0], dtype=K.dtype)
    return w2c[:3, :3].T @ direction


def test_resize_keeps_rays_through_pixel_centres():
    # Halving the resolution: new pixel 0 covers old pixels 0 and 1, whose centres are 0 and 1,
    # so its centre is old coordinate 0.5 (the half-pixel convention).
    K = intrinsics_from_fov(50.0, 64, 96).double()
    w2c = orbit(1, 10.0, 3.0, dtype=torch.float64)[0]
    small = cam.resize_intrinsics(K, (64, 96), (32, 48))
    _, rays = cam.pixel_rays(small, w2c, 32, 48, normalize=False)
    torch.testing.assert_close(rays[0, 0], single_ray(K, w2c, 0.5, 0.5))
    torch.testing.assert_close(rays[31, 47], single_ray(K, w2c, 94.5, 62.5))


def test_crop_moves_the_principal_point():
    K = intrinsics_from_fov(50.0, 64, 96).double()
    w2c = orbit(1, 10.0, 3.0, dtype=torch.float64)[0]
    cropped = cam.crop_intrinsics(K, left=16, top=8)
    _, rays = cam.pixel_rays(cropped, w2c, 40, 40, normalize=False)
    torch.testing.assert_close(rays[0, 0], single_ray(K, w2c, 16.0, 8.0))


def test_rays_hit_the_points_that_project_to_their_pixels():
    K = torch.tensor([[60.0, 0, 20.0], [0, 55.0, 14.0], [0, 0, 1]], dtype=torch.float64)
    w2c = orbit(3, 25.0, 4.0, dtype=torch.float64)
    origins, directions = cam.pixel_rays(K, w2c, 30, 40, normalize=False)
    assert origins.shape == directions.shape == (3, 30, 40, 3)
    points = origins[:, 7, 11] + 2.5 * directions[:, 7, 11]  # (3, 3): depth 2.5 in each view
    uv, depth = cam.project(points[:, None], K, w2c)
    torch.testing.assert_close(uv[:, 0], torch.tensor([[11.0, 7.0]] * 3, dtype=torch.float64))
    torch.testing.assert_close(depth[:, 0], torch.full((3,), 2.5, dtype=torch.float64))
    _, unit = cam.pixel_rays(K, w2c, 30, 40)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3, 30, 40, dtype=torch.float64))


def test_orbit_cameras_sit_where_asked_and_look_at_the_target():
    target = (0.5, -0.2, 0.1)
    w2c = orbit(6, 30.0, 4.0, look_at_point=target, dtype=torch.float64)
    offsets = cam.camera_centers(w2c) - torch.tensor(target, dtype=torch.float64)
    spherical = cartesian_to_spherical(offsets)
    torch.testing.assert_close(spherical[:, 2], torch.full((6,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(
        spherical[:, 1], torch.full((6,), math.radians(30), dtype=torch.float64)
    )
    steps = torch.diff(torch.rad2deg(spherical[:, 0])) % 360
    torch.testing.assert_close(steps, torch.full((5,), 60.0, dtype=torch.float64))
    K = intrinsics_from_fov(40.0, 32, 32).double()
    above = torch.tensor([target, [target[0], target[1], target[2] + 0.5]], dtype=torch.float64)
    uv, _ = cam.project(above, K, w2c)
    torch.testing.assert_close(uv[:, 0], torch.full((6, 2), 15.5, dtype=torch.float64))
    assert torch.all(uv[:, 1, 1] < uv[:, 0, 1]), "world +z should appear above the target"


def test_spherical_round_trip():
    points = torch.randn(20, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spherical = cartesian_to_spherical(points)
    back = spherical_to_cartesian(spherical[:, 0], spherical[:, 1], spherical[:, 2])
    torch.testing.assert_close(back, points)


def test_bad_orbits_are_errors():
    with pytest.raises(ValueError, match="at least one view"):
        orbit(0)
    with pytest.raises(ValueError, match="parallel"):
        orbit(2, elevation_deg=90.0)
    with pytest.raises(ValueError, match="field of view"):
        intrinsics_from_fov(180.0, 10, 10)


def test_rigid_inverse_and_centres():
    w2c = orbit(4, 15.0, 2.0, dtype=torch.float64)
    torch.testing.assert_close(
        cam.invert_rigid(w2c) @ w2c, torch.eye(4, dtype=torch.float64).expand(4, 4, 4)
    )
    torch.testing.assert_close(cam.camera_centers(w2c), cam.invert_rigid(w2c)[:, :3, 3])


def random_similarity(generator: torch.Generator, scale: float) -> torch.Tensor:
    """A similarity transform (4, 4): rotation, uniform scale, translation."""
    similarity = torch.eye(4, dtype=torch.float64)
    similarity[:3, :3] = scale * random_rotation(generator)
    similarity[:3, 3] = torch.randn(3, generator=generator, dtype=torch.float64)
    return similarity


def test_scene_normalisation_levels_centres_and_scales():
    generator = torch.Generator().manual_seed(4)
    # A capture in a known frame: 12 cameras 30 degrees above a 1.0 x 0.6 x 0.4 box.
    w2c = orbit(12, 30.0, 3.0, dtype=torch.float64)
    half = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]).double()
    box = corners * half + torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64)
    for _ in range(8):  # ...moved into arbitrary worlds, upside down included
        to_world = random_similarity(generator, scale=3.7)
        w2c_world = normalize_w2c(w2c, to_world)
        similarity = scene_normalization(w2c_world, cam.transform_points(to_world, box))
        normalised = cam.transform_points(similarity @ to_world, box)
        torch.testing.assert_close(
            (normalised.amax(0) + normalised.amin(0)) / 2, torch.zeros(3).double()
        )
        assert (normalised.amax(0) - normalised.amin(0)).max() == pytest.approx(2.0)
        centres = cam.camera_centers(normalize_w2c(w2c_world, similarity))
        assert centres[:, 2].std() < 1e-9, "cameras should lie on a level plane"
        assert torch.all(centres[:, 2] > 0), "cameras looked down at the object: +z is up"
        # Normalising moves cameras rigidly: pixels of the object do not change.
        K = intrinsics_from_fov(40.0, 32, 32).double()
        before, _ = cam.project(cam.transform_points(to_world, box), K, w2c_world)
        after, _ = cam.project(normalised, K, normalize_w2c(w2c_world, similarity))
        torch.testing.assert_close(before, after)


def test_scene_normalisation_needs_three_cameras():
    with pytest.raises(ValueError, match="at least 3 cameras"):
        scene_normalization(orbit(2, 30.0, dtype=torch.float64), torch.randn(5, 3).double())


def test_pose_features_follow_the_reference_layout():
    w2c = orbit(4, 30.0, 4.0, start_azimuth_deg=90.0, dtype=torch.float64)
    K = torch.tensor([[200.0, 0, 127.5], [0, 220.0, 100.0], [0, 0, 1]], dtype=torch.float64)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    stats = intensity_stats(images)
    torch.testing.assert_close(stats[:, 0], images.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(stats[:, 1], images.flatten(1).var(dim=1))  # unbiased
    features = pose_features(K, w2c, (256, 320), stats)
    assert features.shape == (4, POSE_FEATURE_DIM)
    first = features[0].tolist()
    assert first[0] == pytest.approx(math.radians(60.0))  # polar angle from +z
    assert first[1:3] == pytest.approx([1.0, 0.0], abs=1e-9)  # sin, cos of azimuth 90 degrees
    assert first[3] == pytest.approx(4.0)
    assert first[4:8] == pytest.approx([200 / 320, 220 / 256, 127.5 / 320, 100 / 256])
    assert first[8:] == pytest.approx(stats[0].tolist())
    torch.testing.assert_close(pose_features(K, w2c, (256, 320))[:, 8:], torch.zeros(4, 2).double())
