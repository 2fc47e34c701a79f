"""Pictures for people: image grids and a wireframe check of cameras around the object box."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from viewdiff.cameras.conventions import project

# Edges of the normalised object box [-1, 1]^3, coloured by the world axis they run along.
_AXIS_COLOURS = {0: (220, 40, 40), 1: (40, 170, 40), 2: (40, 80, 230)}


def to_pil(image: Tensor) -> Image.Image:
    """An image (3, H, W) in [-1, 1] as an 8-bit PIL image."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Images of one size tiled row by row (about square when ``columns`` is None)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def _box_edges(half_size: float) -> list[tuple[Tensor, Tensor, int]]:
    """The 12 edges of the cube [-h, h]^3 as (start, end, axis)."""
    edges = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for sign_a in (-1.0, 1.0):
            for sign_b in (-1.0, 1.0):
                start = torch.zeros(3, dtype=torch.float64)
                start[others[0]], start[others[1]], start[axis] = sign_a, sign_b, -1.0
                end = start.clone()
                end[axis] = 1.0
                edges.append((start * half_size, end * half_size, axis))
    return edges


def draw_box_views(
    K: Tensor, w2c: Tensor, image_size_hw: tuple[int, int], half_size: float = 1.0
) -> list[Image.Image]:
    """Each camera's view (K (V, 3, 3), w2c (V, 4, 4)) of the object box, edges coloured x/y/z.

    The floor of the box (z = -h) is shaded, so that a glance shows whether the cameras look at
    the object and which way is up.
    """
    height, width = image_size_hw
    edges = _box_edges(half_size)
    floor = torch.tensor([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], dtype=torch.float64)
    views = []
    for index in range(w2c.shape[0]):
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        floor_uv, floor_depth = project(floor * half_size, K[index].double(), w2c[index].double())
        if bool((floor_depth > 0).all()):
            draw.polygon([tuple(p) for p in floor_uv.tolist()], fill=(225, 225, 225))
        for start, end, axis in edges:
            uv, depth = project(torch.stack([start, end]), K[index].double(), w2c[index].double())
            if bool((depth > 0).all()):  # skip edges that reach behind the camera
                draw.line([tuple(p) for p in uv.tolist()], fill=_AXIS_COLOURS[axis], width=2)
        draw.text((4, 4), f"view {index}", fill=(0, 0, 0))
        views.append(image)
    return views
