"""cameras.json: the per-view OpenCV cameras that travel with generated views and trajectories.

Layout: ``{"convention": "opencv", "height": H, "width": W, "views": [{"K": 3x3, "w2c": 4x4}]}``
with ``K`` in pixels of an H x W image (pixel centres at integers) and ``w2c`` world-to-camera.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from viewdiff.cameras.checks import camera_problem

CONVENTION = "opencv"


def cameras_to_json(K: Tensor, w2c: Tensor, image_size_hw: tuple[int, int]) -> dict[str, Any]:
    """The JSON document of V cameras: K (V, 3, 3) and w2c (V, 4, 4)."""
    if K.shape[0] != w2c.shape[0]:
        raise ValueError(f"{K.shape[0]} intrinsics for {w2c.shape[0]} extrinsics")
    views = [
        {"K": k.tolist(), "w2c": e.tolist()} for k, e in zip(K.double(), w2c.double(), strict=True)
    ]
    height, width = image_size_hw
    return {"convention": CONVENTION, "height": int(height), "width": int(width), "views": views}


def _matrix(view: dict[str, Any], key: str, size: int, where: str) -> Tensor:
    """One square matrix of a view, checked for its shape."""
    if key not in view:
        raise ValueError(f"{where}: missing '{key}'")
    try:
        matrix = torch.tensor(view[key], dtype=torch.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: '{key}' is not a {size}x{size} matrix of numbers") from None
    if matrix.shape != (size, size):
        raise ValueError(f"{where}: '{key}' must be {size}x{size}, got shape {list(matrix.shape)}")
    return matrix


def cameras_from_json(
    document: dict[str, Any], source: str = "cameras.json"
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """K (V, 3, 3), w2c (V, 4, 4) and (H, W) of a cameras.json document, checked view by view."""
    if document.get("convention") != CONVENTION:
        raise ValueError(
            f"{source}: expected convention '{CONVENTION}', got {document.get('convention')!r}"
        )
    for key in ("height", "width"):
        if not isinstance(document.get(key), int) or document[key] <= 0:
            raise ValueError(f"{source}: '{key}' must be a positive integer")
    views = document.get("views")
    if not isinstance(views, list) or not views:
        raise ValueError(f"{source}: 'views' must be a non-empty list")
    Ks, w2cs = [], []
    for index, view in enumerate(views):
        where = f"{source}: view {index}"
        if not isinstance(view, dict):
            raise ValueError(f"{where}: expected an object with 'K' and 'w2c'")
        K, w2c = _matrix(view, "K", 3, where), _matrix(view, "w2c", 4, where)
        problem = camera_problem(K, w2c)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")
        Ks.append(K)
        w2cs.append(w2c)
    return torch.stack(Ks), torch.stack(w2cs), (document["height"], document["width"])


def write_cameras(path: str | Path, K: Tensor, w2c: Tensor, image_size_hw: tuple[int, int]) -> None:
    """Write cameras.json."""
    Path(path).write_text(json.dumps(cameras_to_json(K, w2c, image_size_hw), indent=1) + "\n")


def read_cameras(path: str | Path) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Read cameras.json: K (V, 3, 3), w2c (V, 4, 4), (H, W)."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"cameras file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cameras_from_json(document, source=str(path))
