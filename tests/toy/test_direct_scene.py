"""A toy ball written directly as Gaussians: the toy colour rule reads it, in flat colour."""

import pytest
import torch

from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.scene.render import render
from viewdiff.toy.classify import classify_colour, rgb_to_hsv
from viewdiff.toy.direct_scene import direct_ball
from viewdiff.toy.sphere_points import fibonacci_sphere


@pytest.mark.parametrize("colour", ["red", "blue"])
def test_a_direct_ball_renders_as_a_flat_disc_of_its_colour(colour):
    scene = direct_ball(colour)
    cameras = orbit_trajectory(4, 25.0, 4.4, 64, 34.0)
    with torch.no_grad():
        views = torch.stack([render(scene, K, w2c, 64, 64, background=0.6).rgb
                             for K, w2c in zip(cameras.K, cameras.w2c, strict=True)])  # fmt: skip
    assert classify_colour(views) == [colour] * 4
    # No light: the disc's inside is one colour (the toy renders shade it 0.6-1.0).
    _, _, value = rgb_to_hsv(views[:, :, 24:40, 24:40])
    assert float(value.max() - value.min()) < 0.02
    assert scene.num_gaussians == 3000 and scene.sh_degree == 0


def test_sphere_points_cover_the_sphere_and_unknown_colours_are_refused():
    points = fibonacci_sphere(500).double()
    assert torch.allclose(points.norm(dim=1), torch.ones(500, dtype=torch.float64))
    assert points.mean(0).abs().max() < 0.01  # evenly spread
    with pytest.raises(ValueError, match="unknown toy colour"):
        direct_ball("teal")
