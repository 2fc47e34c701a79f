"""The objects of the synthetic datasets: textured CO3D-like ones and the toy world's.

``make_object`` builds one object of a category in a style (``STYLES``): "co3d" objects are
boxes, cans, balls and stacked composites with per-face colours, stripes and markers on a
checkered ground (captions such as "a red and blue striped box"); "toy" objects are the single-hue
shapes of ``viewdiff.data.toy_objects``, and "toy_sided" the same with one darker side, their own
light and a world-fixed backdrop. Each is centred in its object frame (+z up, bounding
box centred at the origin) and put into its own random world frame (rotation, translation and
scale, like CO3D's arbitrary SfM worlds). Rendering is ``viewdiff.data.raycast``'s; filming and
writing the CO3Dv2 layout is ``viewdiff.data.synthetic``'s.
"""

from __future__ import annotations

import colorsys
import re

import numpy as np

from viewdiff.data.raycast import Primitive, SyntheticObject
from viewdiff.data.toy_objects import (
    TOY_SHAPES,
    toy_background,
    toy_environment,
    toy_light,
    toy_mark,
    toy_shapes,
)

CATEGORIES = ("box", "can", "ball", "composite")
# Style -> its categories: "co3d" textured objects on a checker floor, "toy" the toy world's,
# "toy_sided" the sided toy world's.
STYLES: dict[str, tuple[str, ...]] = {
    "co3d": CATEGORIES,
    "toy": TOY_SHAPES,
    "toy_sided": TOY_SHAPES,
}


def _palette(rng: np.random.Generator) -> np.ndarray:
    """Six saturated colours of well separated hues, in random order: (6, 3)."""
    hues = (rng.uniform() + np.arange(6) / 6.0 + rng.uniform(-0.03, 0.03, 6)) % 1.0
    rng.shuffle(hues)
    sat, val = rng.uniform(0.55, 0.9, 6), rng.uniform(0.6, 0.95, 6)
    return np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sat, val, strict=True)])


def _colour_name(rgb: np.ndarray) -> str:
    """A plain English name of an RGB colour in [0, 1], for captions."""
    hue, sat, _ = colorsys.rgb_to_hsv(*rgb)
    if sat < 0.25:
        return "grey"
    bins = [(0.04, "red"), (0.11, "orange"), (0.18, "yellow"), (0.45, "green"), (0.53, "cyan")]
    bins += [(0.70, "blue"), (0.80, "purple"), (0.93, "pink"), (1.01, "red")]
    return next(name for edge, name in bins if hue < edge)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation (3, 3) (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _shapes(category: str, rng: np.random.Generator) -> tuple[list[Primitive], str]:
    """The primitives (bottom at z=0) and the caption of one object of a category."""
    p1, p2 = _palette(rng), _palette(rng)
    names = [_colour_name(c) for c in p1] + [_colour_name(c) for c in p2]

    def prim(kind: str, z: float, size: tuple | np.ndarray, palette: np.ndarray) -> Primitive:
        return Primitive(kind, np.array([0.0, 0.0, z]), np.array(size, dtype=float), palette)

    if category == "box":
        half = rng.uniform(0.3, 0.7, 3)  # half-extents (3,)
        return [prim("box", half[2], half, p1)], f"a {names[0]} and {names[1]} striped box"
    if category == "can":
        r, h = rng.uniform(0.3, 0.5), rng.uniform(0.4, 0.75)
        caption = f"a {names[0]} to {names[1]} can with a {names[4]} stripe"
        return [prim("cylinder", h, (r, r, h), p1)], caption
    if category == "ball":
        r = rng.uniform(0.5, 0.8)
        return [prim("sphere", r, (r, r, r), p1)], f"a {names[0]} ball with {names[4]} spots"
    if category != "composite":
        raise ValueError(f"unknown synthetic category {category!r}; expected one of {CATEGORIES}")
    if rng.uniform() < 0.5:  # a box with a ball on top, both centred on the z axis
        half = rng.uniform(0.3, 0.55, 3)  # the box's half-extents (3,)
        r = rng.uniform(0.2, min(half[0], half[1]))
        shapes = [prim("box", half[2], half, p1), prim("sphere", 2 * half[2] + r, (r, r, r), p2)]
        return shapes, f"a striped {names[0]} box with a {names[6]} ball on top"
    slab = (rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.8), rng.uniform(0.06, 0.14))
    r, h = rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.55)
    shapes = [prim("box", slab[2], slab, p1), prim("cylinder", 2 * slab[2] + h, (r, r, h), p2)]
    return shapes, f"a {names[6]} can on a {names[0]} slab"


def make_object(
    category: str, rng: np.random.Generator, style: str = "co3d", index: int = 0
) -> SyntheticObject:
    """A random object of a category, centred in its frame and placed in a random world frame.

    ``style`` "co3d": textured objects on a checker floor; "toy": the toy world's single-hue
    objects before plain backdrops (``viewdiff.data.toy_objects``), coloured by ``index``;
    "toy_sided": the same objects (equal draws), then a darker side, a light and a backdrop.
    """
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; expected one of {tuple(STYLES)}")
    toy = style in ("toy", "toy_sided")
    shapes, caption = toy_shapes(category, index, rng) if toy else _shapes(category, rng)
    caption = re.sub(r"\ba (?=[aeiou])", "an ", caption)  # "an orange can"
    low = np.min([p.centre - p.size for p in shapes], axis=0)
    high = np.max([p.centre + p.size for p in shapes], axis=0)
    shift = (low + high) / 2.0  # bounding box centre to the origin
    shapes = [Primitive(p.kind, p.centre - shift, p.size, p.palette) for p in shapes]
    object_to_world = np.eye(4)
    scale = np.exp(rng.uniform(np.log(0.5), np.log(3.0)))
    object_to_world[:3, :3] = scale * _random_rotation(rng)
    object_to_world[:3, 3] = rng.normal(0.0, 2.0, 3)
    if toy:
        background, checker = toy_background(rng), 1.0
    else:
        background = np.concatenate(
            [rng.uniform(0.25, 0.75, (2, 3)), rng.uniform(0.1, 0.9, (2, 3))]
        )
        checker = rng.uniform(0.15, 0.35)
    if style != "toy_sided":
        return SyntheticObject(
            category, tuple(shapes), caption, object_to_world, background, checker, plain=toy
        )
    # Drawn after everything the plain toy world draws: its objects stay as they were.
    light, ambient = toy_light(rng)
    return SyntheticObject(
        category, tuple(shapes), caption, object_to_world, background, checker, plain=True,
        mark=toy_mark(category, rng), light=light, ambient=ambient,
        environment=toy_environment(rng),
    )  # fmt: skip
