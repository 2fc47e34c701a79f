"""Toy scenes written directly as Gaussians, not fitted to toy renders: the inputs a user brings.

The editing benches also score a scene that the toy renderer never drew. A ball of a toy colour
is written straight from its parameters, as another program might write it: opaque Gaussians on
its surface, one flat colour, no light, in the toy prior's normalised frame (the object at the
origin, about the toy objects' size). Its renders are flat discs of colour, unlike the shaded
toy renders the prior was trained on.
"""

from __future__ import annotations

import colorsys

import torch

from viewdiff.data.toy_objects import TOY_COLOURS
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.toy.sphere_points import fibonacci_sphere


def direct_ball(colour: str, radius: float = 0.8, count: int = 3000) -> GaussianScene:
    """A ball of a toy colour (its hue, saturation 0.85, value 0.9) as opaque Gaussians on its
    surface, SH degree 0."""
    if colour not in TOY_COLOURS:
        raise ValueError(f"unknown toy colour {colour!r}; expected one of {tuple(TOY_COLOURS)}")
    rgb = torch.tensor(colorsys.hsv_to_rgb(TOY_COLOURS[colour], 0.85, 0.9), dtype=torch.float64)
    points = radius * fibonacci_sphere(count).double()
    scene = GaussianScene.from_points(points, rgb.expand(count, 3).clone(), 0, opacity=0.95)
    return scene.to(dtype=torch.float32)
