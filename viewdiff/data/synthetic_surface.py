"""Points of a synthetic object, in its world frame: the point cloud on its outer surface (CO3D's
``pointcloud.ply``) and the key points that tests check projections against (box corners, a
centre inside the object, the first hits of rays shot at it).
"""

from __future__ import annotations

import numpy as np

from viewdiff.data.raycast import Primitive, SyntheticObject, albedo, inside, trace


def _to_world(obj: SyntheticObject, points: np.ndarray) -> np.ndarray:
    return points @ obj.object_to_world[:3, :3].T + obj.object_to_world[:3, 3]


def _sample_primitive(prim: Primitive, count: int, rng: np.random.Generator) -> tuple:
    """Uniform points on a primitive's surface: points (n, 3), outer normals (n, 3), faces (n,)."""
    rows = np.arange(count)
    if prim.kind == "box":
        h = prim.size
        areas = np.repeat([h[1] * h[2], h[0] * h[2], h[0] * h[1]], 2)
        faces = rng.choice(6, count, p=areas / areas.sum())
        normals = np.zeros((count, 3))
        normals[rows, faces // 2] = np.where(faces % 2 == 0, 1.0, -1.0)
        local = np.where(normals != 0, normals, rng.uniform(-1.0, 1.0, (count, 3)))
        return prim.centre + local * h, normals, faces
    if prim.kind == "cylinder":
        r, _, h = prim.size
        areas = np.array([4 * np.pi * r * h, np.pi * r * r, np.pi * r * r])
        faces = rng.choice(3, count, p=areas / areas.sum())
        phi = rng.uniform(-np.pi, np.pi, count)
        rho = np.where(faces == 0, r, r * np.sqrt(rng.uniform(size=count)))
        z = np.where(faces == 0, rng.uniform(-h, h, count), np.where(faces == 1, h, -h))
        normals = np.stack([np.cos(phi), np.sin(phi), np.zeros(count)], 1)
        normals[faces == 1], normals[faces == 2] = (0.0, 0.0, 1.0), (0.0, 0.0, -1.0)
        return prim.centre + np.stack([rho * np.cos(phi), rho * np.sin(phi), z], 1), normals, faces
    normals = rng.normal(size=(count, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return prim.centre + prim.size[0] * normals, normals, np.zeros(count, dtype=int)


def _area(prim: Primitive) -> float:
    """Surface area of a primitive."""
    a, b, c = prim.size
    if prim.kind == "box":
        return 8.0 * (a * b + b * c + a * c)
    if prim.kind == "cylinder":
        return 4.0 * np.pi * a * c + 2.0 * np.pi * a * a
    return 4.0 * np.pi * a * a


def surface_points(
    obj: SyntheticObject, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """About ``count`` points on the object's outer surface: world (P, 3), colours (P, 3) uint8."""
    areas = np.array([_area(p) for p in obj.primitives])
    counts = rng.multinomial(count, areas / areas.sum())
    points, colours = [], []
    for i, (prim, n) in enumerate(zip(obj.primitives, counts, strict=True)):
        p, normals, faces = _sample_primitive(prim, n, rng)
        nudged = p + 1e-4 * normals  # a point just outside the surface is inside no other part
        hidden = np.zeros(n, dtype=bool)
        for j, other in enumerate(obj.primitives):
            if j != i:
                hidden |= inside(other, nudged)
        points.append(p[~hidden])
        colours.append(albedo(obj, prim, p[~hidden], faces[~hidden]))
    colours = np.round(np.clip(np.concatenate(colours), 0.0, 1.0) * 255.0).astype(np.uint8)
    return _to_world(obj, np.concatenate(points)), colours


def object_keypoints(obj: SyntheticObject) -> dict[str, np.ndarray]:
    """World key points: tight box corners (8, 3), its centre (3,), surface points (14, 3).

    The centre is inside the object (every object is stacked on its z axis); the surface points
    are the first hits of rays shot at the centre along the 6 axes and 8 diagonals.
    """
    low, high = obj.bounds()
    centre = (low + high) / 2.0
    if not any(inside(p, centre[None])[0] for p in obj.primitives):
        raise RuntimeError(f"the box centre of a synthetic {obj.category} is outside it")
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])])  # fmt: skip
    diagonals = corners - centre
    directions = np.concatenate(
        [np.eye(3), -np.eye(3), diagonals / np.linalg.norm(diagonals, axis=1, keepdims=True)]
    )
    origins = centre + 4.0 * np.linalg.norm(high - low) * directions
    t, _, _, _ = trace(obj, origins, -directions)
    surface = origins - t[:, None] * directions
    return {
        "box_corners_world": _to_world(obj, corners),
        "centre_world": _to_world(obj, centre[None])[0],
        "surface_keypoints_world": _to_world(obj, surface),
    }
