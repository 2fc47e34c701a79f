"""Analytic ray casting of procedural objects: exact pinhole renders of boxes, cans and balls.

An object is a few analytic primitives (a box, a z-axis cylinder, a sphere) in an object frame,
placed in a world frame by a similarity transform, on a checkered ground disc in front of a
direction-dependent backdrop (the toy world's plain objects: single-hue primitives before a
plain gradient, no ground). Rays meet each primitive in closed form (slab test for boxes, a
quadratic for curved sides, planes for caps), so masks and depths are exact at pixel centres.
Textures make every side tell apart: per-face colours with face-dependent stripes and an
off-centre marker on boxes, colour varying with azimuth plus markers on cans and balls; shading
is a directional light (fixed, or the object's own). The sided toy world's objects add a darker
patch (``Mark``) and a world-fixed ``Environment`` backdrop. Building objects and writing
datasets is viewdiff/data/synthetic.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from viewdiff.cameras.conventions import pixel_rays

_LIGHT = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])  # object frame


@dataclass(frozen=True, eq=False)
class Primitive:
    """A box, z-axis cylinder or sphere in the object frame, with its palette (6, 3) in [0, 1]."""

    kind: str  # "box" | "cylinder" | "sphere"
    centre: np.ndarray  # (3,)
    size: np.ndarray  # (3,): box half extents; cylinder (r, r, half height); sphere (r, r, r)
    palette: np.ndarray  # (6, 3): box faces +x -x +y -y +z -z; curved: start, end, caps, markers


@dataclass(frozen=True, eq=False)
class Mark:
    """A patch of a primitive drawn darker: the surface points whose position relative to the
    primitive, divided by its size (so in [-1, 1]^3), has a dot product with ``direction`` above
    ``threshold``. A box face (threshold 0.99), a band down one side of a can, a cap on a ball:
    one side of the object that only a consistent 3D object keeps in place from view to view."""

    direction: np.ndarray  # (3,) unit, object frame
    threshold: float
    shade: float  # the patch's albedo is the primitive's times this


@dataclass(frozen=True, eq=False)
class Environment:
    """A backdrop fixed in the object's world: ground below the horizon (z = 0 of the ray
    directions), darker towards the nadir; a sky from the horizon colour to the zenith colour
    above it; and a slow brightening towards one azimuth, so each side has its own backdrop."""

    ground: np.ndarray  # (3,)
    horizon: np.ndarray  # (3,)
    zenith: np.ndarray  # (3,)
    wave: float  # relative brightening towards ``azimuth``, and darkening away from it
    azimuth: float  # radians, object frame

    def colour(self, unit: np.ndarray) -> np.ndarray:
        """The backdrop (N, 3) seen along unit directions (N, 3) (object frame)."""
        elevation = unit[:, 2:3]
        sky = self.horizon + np.sqrt(np.clip(elevation, 0.0, 1.0)) * (self.zenith - self.horizon)
        ground = self.ground * (1.0 - 0.3 * np.sqrt(np.clip(-elevation, 0.0, 1.0)))  # darker below
        above = 1.0 / (1.0 + np.exp(-elevation / 0.12))  # a soft horizon, ~10 degrees wide
        colour = above * sky + (1.0 - above) * ground
        azimuth = np.arctan2(unit[:, 1], unit[:, 0])
        return colour * (1.0 + self.wave * np.cos(azimuth - self.azimuth))[:, None]


@dataclass(frozen=True, eq=False)
class SyntheticObject:
    """An object, its caption, its placement in the world and its background."""

    category: str
    primitives: tuple[Primitive, ...]
    caption: str
    object_to_world: np.ndarray  # (4, 4) similarity: scale * rotation, translation
    background: np.ndarray  # (4, 3): ground checker colours a, b; backdrop low, high
    checker: float  # ground checker size, object units
    # The toy world's look: single-hue primitives (palette row 0, no texture), no ground, and a
    # plain vertical gradient from backdrop low to high (no wave): little for a VAE to learn.
    plain: bool = False
    # The sided toy world's (all None: the fixed light, the backdrop gradient, no mark).
    mark: Mark | None = None  # a darker side of the first primitive
    light: np.ndarray | None = None  # (3,) unit direction to the light, object frame
    ambient: float = 0.6  # the shade of surfaces facing away from the light
    environment: Environment | None = None  # the backdrop, instead of background rows 2, 3

    @property
    def scale(self) -> float:
        """World units per object unit."""
        return float(np.cbrt(np.linalg.det(self.object_to_world[:3, :3])))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The tight axis-aligned box (low, high) of the object, object frame."""
        low = np.min([p.centre - p.size for p in self.primitives], axis=0)
        return low, np.max([p.centre + p.size for p in self.primitives], axis=0)


# Ray casting (object frame; directions need not be unit, so t is the caller's ray parameter) ---


def _hit_box(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple:
    """Slab test: entry t (N,) (inf on a miss), normals (N, 3), faces (N,) 0..5 = +x -x ... -z."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (prim.centre - prim.size - o) / d, (prim.centre + prim.size - o) / d
    t_min = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf)
    t_max = np.nan_to_num(np.maximum(t1, t2), nan=np.inf)
    axis = np.argmax(t_min, axis=1)
    rows = np.arange(len(o))
    t_near = t_min[rows, axis]
    t = np.where((t_near <= t_max.min(axis=1)) & (t_near > 0), t_near, np.inf)
    sign = np.where(d[rows, axis] > 0, -1.0, 1.0)  # entered through the face looking at the ray
    normals = np.zeros_like(o)
    normals[rows, axis] = sign
    return t, normals, 2 * axis + (sign < 0)


def _hit_cylinder(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple:
    """Entry into a z-axis cylinder: t (N,), normals (N, 3), faces 0 side, 1 top, 2 bottom."""
    q, (r, _, h) = o - prim.centre, prim.size
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2.0 * (q[:, 0] * d[:, 0] + q[:, 1] * d[:, 1])
    disc = b**2 - 4.0 * a * (q[:, 0] ** 2 + q[:, 1] ** 2 - r**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        side = (-b - np.sqrt(disc)) / (2.0 * a)
        side = np.where(
            (disc >= 0) & (a > 0) & (np.abs(q[:, 2] + side * d[:, 2]) <= h), side, np.inf
        )
        caps = [(z - q[:, 2]) / d[:, 2] for z in (h, -h)]
        surfaces = [side]  # t of the side, the top cap, the bottom cap: each (N,)
        for t in caps:
            x, y = q[:, 0] + t * d[:, 0], q[:, 1] + t * d[:, 1]
            surfaces.append(np.where(x**2 + y**2 <= r**2, t, np.inf))
    candidates = np.stack([np.where(c > 0, c, np.inf) for c in surfaces], axis=1)  # (N, 3)
    face = np.argmin(candidates, axis=1)
    t = candidates[np.arange(len(o)), face]
    p = q + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    normals = np.stack([p[:, 0] / r, p[:, 1] / r, np.zeros(len(o))], axis=1)
    normals[face == 1], normals[face == 2] = (0.0, 0.0, 1.0), (0.0, 0.0, -1.0)
    return t, normals, face


def _hit_sphere(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple:
    """Entry into a sphere: t (N,), normals (N, 3), faces (all 0)."""
    q, r = o - prim.centre, prim.size[0]
    a, b = (d * d).sum(1), 2.0 * (q * d).sum(1)
    disc = b**2 - 4.0 * a * ((q * q).sum(1) - r**2)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2.0 * a)
    t = np.where((disc >= 0) & (t > 0), t, np.inf)
    normals = (q + np.where(np.isfinite(t), t, 0.0)[:, None] * d) / r
    return t, normals, np.zeros(len(o), dtype=int)


_HIT = {"box": _hit_box, "cylinder": _hit_cylinder, "sphere": _hit_sphere}


def trace(obj: SyntheticObject, o: np.ndarray, d: np.ndarray) -> tuple:
    """Nearest object hit of rays (N, 3): t (N,), primitive (N,) (-1: miss), normals, faces."""
    t = np.full(len(o), np.inf)
    index, normals, faces = np.full(len(o), -1), np.zeros_like(o), np.zeros(len(o), dtype=int)
    for i, prim in enumerate(obj.primitives):
        t_i, n_i, f_i = _HIT[prim.kind](prim, o, d)
        closer = t_i < t
        t[closer], index[closer], normals[closer], faces[closer] = (
            t_i[closer],
            i,
            n_i[closer],
            f_i[closer],
        )
    return t, index, normals, faces


def inside(prim: Primitive, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Whether points (N, 3) lie inside a primitive shrunk by ``margin``."""
    q, size = points - prim.centre, prim.size - margin
    if prim.kind == "box":
        return np.all(np.abs(q) <= size, axis=1)
    if prim.kind == "cylinder":
        return (q[:, 0] ** 2 + q[:, 1] ** 2 <= size[0] ** 2) & (np.abs(q[:, 2]) <= size[2])
    return (q * q).sum(1) <= size[0] ** 2


def texture(prim: Primitive, points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of surface points (object frame): no two sides look alike."""
    p, pal = (points - prim.centre) / prim.size, prim.palette  # p in [-1, 1]^3
    if prim.kind == "box":
        axis = faces // 2
        uv = np.take_along_axis(p, np.array([[1, 2], [0, 2], [0, 1]])[axis], axis=1)
        colour = pal[faces].copy()
        stripe = np.floor((uv[:, 0] + 1.0) * (faces + 2)) % 2 == 1  # frequency differs per face
        colour[stripe] *= 0.65
        marker = ((uv - 0.45) ** 2).sum(1) < 0.3**2  # off-centre: breaks the face's own symmetry
        colour[marker] = 1.0 - pal[faces[marker]]
        return colour
    azimuth = np.arctan2(p[:, 1], p[:, 0])
    w = ((azimuth + np.pi) / (2 * np.pi))[:, None]
    colour = (1.0 - w) * pal[0] + w * pal[1]  # colour runs around the object, a seam at -x
    if prim.kind == "cylinder":
        colour[np.floor((p[:, 2] + 1.0) * 2.0) % 2 == 1] *= 0.75
        colour[np.abs(azimuth) < 0.3] = pal[4]  # vertical marker stripe at +x
        colour[faces == 1] = pal[2]
        colour[faces == 2] = pal[3]
        colour[(faces == 1) & (((p[:, :2] - [0.45, 0.0]) ** 2).sum(1) < 0.3**2)] = pal[5]
        return colour
    unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    colour[np.floor((unit[:, 2] + 1.0) * 3.0) % 2 == 1] *= 0.75
    colour[unit @ np.array([1.0, 0.0, 0.0]) > 0.9] = pal[4]
    colour[unit @ np.array([0.0, -0.6, 0.8]) > 0.93] = pal[5]
    return colour


def albedo(
    obj: SyntheticObject, prim: Primitive, points: np.ndarray, faces: np.ndarray
) -> np.ndarray:
    """Albedo (N, 3) of surface points of one of the object's primitives (object frame)."""
    if not obj.plain:
        return texture(prim, points, faces)
    colour = np.broadcast_to(prim.palette[0], (len(points), 3)).copy()
    if obj.mark is not None and prim is obj.primitives[0]:
        relative = (points - prim.centre) / prim.size
        colour[relative @ obj.mark.direction > obj.mark.threshold] *= obj.mark.shade
    return colour


def render_object(
    obj: SyntheticObject, K: np.ndarray, w2c: np.ndarray, image_size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact pinhole render: image (H, W, 3) uint8, object mask (H, W) bool, z-depth (H, W) f32.

    ``K`` (3, 3) in OpenCV pixels, ``w2c`` (4, 4) world-to-camera of the object's world. Depth is
    of the object or ground, 0 where only the backdrop is seen.
    """
    height, width = image_size_hw
    origins, directions = pixel_rays(
        torch.as_tensor(K, dtype=torch.float64), torch.as_tensor(w2c, dtype=torch.float64),
        height, width, normalize=False,
    )  # fmt: skip
    # Unit camera depth along each ray: the ray parameter t is the z-depth, in any frame.
    world_to_object = np.linalg.inv(obj.object_to_world)
    o = origins.reshape(-1, 3).numpy() @ world_to_object[:3, :3].T + world_to_object[:3, 3]
    d = directions.reshape(-1, 3).numpy() @ world_to_object[:3, :3].T
    t, index, normals, faces = trace(obj, o, d)
    mask = index >= 0
    colour = np.zeros_like(o)
    light = _LIGHT if obj.light is None else obj.light
    for i, prim in enumerate(obj.primitives):
        hit = index == i
        base = albedo(obj, prim, o[hit] + t[hit, None] * d[hit], faces[hit])
        lit = obj.ambient + (1.0 - obj.ambient) * np.clip(normals[hit] @ light, 0.0, None)
        colour[hit] = base * lit[:, None]
    # The ground: a checkered disc under the object; beyond it, a backdrop at infinity.
    low, high = obj.bounds()
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = (low[2] - o[:, 2]) / d[:, 2]
    g = o + np.nan_to_num(t_ground, posinf=0.0, neginf=0.0)[:, None] * d
    ground = ~mask & (t_ground > 0) & (np.hypot(g[:, 0], g[:, 1]) <= 4.0 * np.linalg.norm(high))
    ground &= not obj.plain
    cell = (np.floor(g[ground, 0] / obj.checker) + np.floor(g[ground, 1] / obj.checker)) % 2
    colour[ground] = obj.background[cell.astype(int)]
    backdrop = ~mask & ~ground
    unit = d[backdrop] / np.linalg.norm(d[backdrop], axis=1, keepdims=True)
    if obj.environment is not None:
        colour[backdrop] = obj.environment.colour(unit)
    w = ((unit[:, 2] + 1.0) / 2.0)[:, None]
    wave = 0.85 + 0.15 * np.sin(5.0 * np.arctan2(unit[:, 1], unit[:, 0]) + 3.0 * unit[:, 2])
    if obj.plain:
        wave = np.ones_like(wave)
    if obj.environment is None:
        colour[backdrop] = ((1.0 - w) * obj.background[2] + w * obj.background[3]) * wave[:, None]
    depth = np.where(mask | ground, np.where(mask, t, t_ground), 0.0)
    image = np.round(np.clip(colour, 0.0, 1.0) * 255.0).astype(np.uint8)
    shape = (height, width)
    return image.reshape(*shape, 3), mask.reshape(shape), depth.reshape(shape).astype(np.float32)
