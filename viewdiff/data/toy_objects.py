"""The toy world's objects: single-hue balls, boxes and cans before plain backdrops, and the
sided toy world's, which also have one darker side.

A toy object is one analytic primitive of one of ``TOY_SHAPES`` in one of ``TOY_COLOURS``,
uniformly coloured (no texture), shaded by the fixed light of ``viewdiff.data.raycast``, floating
before a low-saturation vertical gradient (no ground: a checker floor eats a small VAE's latent
capacity). Its caption is made from its parameters, "a red ball", "an orange can", in words the
tiny CLIP tokenizer of ``viewdiff.tiny`` knows. ``viewdiff.data.synthetic`` (``style="toy"``)
places them in random world frames, films them and writes them in the CO3Dv2 layout, so the
real readers, shards and loader take them.

The colours are HSV hues six apart on the colour wheel (red 0, orange 25, yellow 55, green 120,
blue 220, purple 280 degrees), each jittered a little per object; the object's size and
proportions vary within its shape, and normalisation removes its world scale.

The sided world (``style="toy_sided"``) adds what only a consistent 3D object keeps in place
from view to view: one darker side (``toy_mark``: a box face, a band down a can, a cap on a
ball; where it sits drawn per object, so no caption can say it), a light from its own direction
(``toy_light``), and a backdrop fixed in its world (``toy_environment``: ground, horizon, sky and
a brighter side) whose tones are drawn apart from the object's colour. Captions are unchanged.
"""

from __future__ import annotations

import colorsys

import numpy as np

from viewdiff.data.raycast import Environment, Mark, Primitive

TOY_SHAPES = ("ball", "box", "can")
# Colour name -> HSV hue in [0, 1).
TOY_COLOURS: dict[str, float] = {
    "red": 0.0,
    "orange": 25 / 360,
    "yellow": 55 / 360,
    "green": 120 / 360,
    "blue": 220 / 360,
    "purple": 280 / 360,
}
_PRIMITIVE = {"ball": "sphere", "box": "box", "can": "cylinder"}
_HUE_JITTER = 0.012  # +-4 degrees: the six colours stay well apart


def toy_caption(colour: str, shape: str) -> str:
    """The caption of a toy object: 'a red ball', 'an orange can'."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def toy_prompts() -> list[str]:
    """Every caption of the toy world, shapes outer, colours inner (18 prompts)."""
    return [toy_caption(colour, shape) for shape in TOY_SHAPES for colour in TOY_COLOURS]


def toy_colour(index: int, shape: str) -> str:
    """The colour of a shape's ``index``-th object: every colour in turn, a shape-dependent start,
    so that even a dataset of two sequences per shape holds six colours."""
    names = list(TOY_COLOURS)
    return names[(index + 2 * TOY_SHAPES.index(shape)) % len(names)]


def _rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright RGB (3,) of a named toy colour, jittered."""
    hue = (TOY_COLOURS[colour] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 0.95), rng.uniform(0.8, 0.97)))


def toy_shapes(shape: str, index: int, rng: np.random.Generator) -> tuple[list[Primitive], str]:
    """The primitive (bottom at z=0) and the caption of the ``index``-th toy object of a shape."""
    if shape not in TOY_SHAPES:
        raise ValueError(f"unknown toy shape {shape!r}; expected one of {TOY_SHAPES}")
    colour = toy_colour(index, shape)
    if shape == "ball":
        size = np.full(3, rng.uniform(0.5, 0.8))
    elif shape == "box":
        size = rng.uniform(0.3, 0.7, 3)
    else:
        radius = rng.uniform(0.3, 0.5)
        size = np.array([radius, radius, rng.uniform(0.4, 0.75)])
    palette = np.tile(_rgb(colour, rng), (6, 1))  # plain objects use row 0 only
    primitive = Primitive(_PRIMITIVE[shape], np.array([0.0, 0.0, size[2]]), size, palette)
    return [primitive], toy_caption(colour, shape)


def toy_background(rng: np.random.Generator) -> np.ndarray:
    """``SyntheticObject.background`` (4, 3) of a toy object: no ground (rows 0, 1 unused), a
    low-saturation grey backdrop, darker or lighter above (rows 2, 3)."""
    grey = rng.uniform(0.3, 0.85)
    low = np.clip(grey + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    high = np.clip(low * rng.uniform(0.8, 1.2), 0.0, 1.0)
    return np.concatenate([np.zeros((2, 3)), low[None], high[None]])


# The sided toy world (style "toy_sided"): each object has one darker side, lit from its own
# direction, before a backdrop fixed in its world whose tone is drawn apart from the object's.
_BOX_SIDES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=float)


def toy_mark(shape: str, rng: np.random.Generator) -> Mark:
    """Where a toy object's darker side is, in its frame: a box face (a side or the top), a band
    down one side of a can, a cap on a ball; its place drawn per object."""
    shade = rng.uniform(0.2, 0.28)
    if shape == "box":
        return Mark(_BOX_SIDES[rng.integers(len(_BOX_SIDES))], 0.99, shade)
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    if shape == "can":
        direction = np.array([np.cos(azimuth), np.sin(azimuth), 0.0])
        return Mark(direction, float(np.cos(np.deg2rad(28.0))), shade)
    elevation = np.deg2rad(rng.uniform(-15.0, 45.0))
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)])  # fmt: skip
    return Mark(direction, float(np.cos(np.deg2rad(40.0))), shade)


def toy_light(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A light from above at a random azimuth (unit (3,), object frame) and the ambient shade."""
    azimuth, elevation = rng.uniform(0.0, 2.0 * np.pi), np.deg2rad(rng.uniform(30.0, 75.0))
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)])  # fmt: skip
    return direction, float(rng.uniform(0.55, 0.75))


def _tone(grey: float, rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour of about ``grey``, tinted towards a random hue."""
    hue, saturation = rng.uniform(), rng.uniform(0.0, 0.18)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, np.clip(grey, 0.0, 1.0)))


def toy_environment(rng: np.random.Generator) -> Environment:
    """A toy object's backdrop: ground, horizon and zenith tones drawn apart from its colour
    (low saturation, so never read as the object), and a slow brightening towards one side."""
    horizon = rng.uniform(0.45, 0.9)
    return Environment(
        ground=_tone(horizon * rng.uniform(0.45, 0.8), rng),
        horizon=_tone(horizon, rng),
        zenith=_tone(horizon * rng.uniform(0.7, 1.15), rng),
        wave=float(rng.uniform(0.1, 0.25)),
        azimuth=float(rng.uniform(0.0, 2.0 * np.pi)),
    )
