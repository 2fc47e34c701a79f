"""Checks of cameras read from files or given by a user: finite entries, positive focal lengths,
the last rows of K and w2c, and a w2c whose 3x3 block is a rotation. A bad camera would train or
render on garbage, so readers skip it (``first_camera_problem``) or refuse it (``check_cameras``).
"""

from __future__ import annotations

import torch
from torch import Tensor

RIGID_TOLERANCE = 1e-4  # |R R^T - I| and |det R - 1| allowed in a camera's rotation


def camera_problem(K: Tensor, w2c: Tensor, tolerance: float = RIGID_TOLERANCE) -> str | None:
    """What is wrong with one camera, K (3, 3) in pixels and OpenCV w2c (4, 4), or None:
    non-finite entries, focal lengths that are not positive, intrinsics whose last row is not
    [0, 0, 1], a last w2c row other than [0, 0, 0, 1], a 3x3 block that is not a rotation."""
    K, w2c = K.double(), w2c.double()
    if not bool(torch.isfinite(K).all()):
        return "K has NaN or inf entries"
    if not bool(torch.isfinite(w2c).all()):
        return "w2c has NaN or inf entries"
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        return f"focal lengths must be positive, got fx={K[0, 0]:.6g}, fy={K[1, 1]:.6g}"
    if not torch.allclose(K[2], K.new_tensor([0.0, 0.0, 1.0]), atol=tolerance):
        return f"the last row of K must be [0, 0, 1], got {K[2].tolist()}"
    if not torch.allclose(w2c[3], w2c.new_tensor([0.0, 0.0, 0.0, 1.0]), atol=tolerance):
        return f"the last row of w2c must be [0, 0, 0, 1], got {w2c[3].tolist()}"
    rotation = w2c[:3, :3]
    drift = (rotation @ rotation.T - torch.eye(3, dtype=rotation.dtype)).abs().max()
    determinant = torch.linalg.det(rotation)
    if drift > tolerance or (determinant - 1).abs() > tolerance:
        return (
            f"w2c is not rigid: its 3x3 block is not a rotation (|R R^T - I| = {drift:.2g}, "
            f"det = {determinant:.6g})"
        )
    return None


def usable_cameras(K: Tensor, w2c: Tensor, tolerance: float = RIGID_TOLERANCE) -> Tensor:
    """Which cameras of K (V, 3, 3) and w2c (V, 4, 4) pass ``camera_problem`` (V,), all at once."""
    K, w2c = K.double(), w2c.double()
    finite = torch.isfinite(K).flatten(1).all(dim=1) & torch.isfinite(w2c).flatten(1).all(dim=1)
    focal = (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0)
    last_K = torch.isclose(K[:, 2], K.new_tensor([0.0, 0.0, 1.0]), atol=tolerance).all(dim=1)
    last_w2c = torch.isclose(w2c[:, 3], w2c.new_tensor([0.0, 0.0, 0.0, 1.0]), atol=tolerance)
    rotation = w2c[:, :3, :3]
    drift = (rotation @ rotation.transpose(1, 2) - torch.eye(3, dtype=K.dtype)).abs().amax((1, 2))
    rigid = (drift <= tolerance) & ((torch.linalg.det(rotation) - 1).abs() <= tolerance)
    return finite & focal & last_K & last_w2c.all(dim=1) & rigid


def first_camera_problem(K: Tensor, w2c: Tensor) -> tuple[int, str] | None:
    """The first bad view of K (V, 3, 3), w2c (V, 4, 4) and what is wrong with it, or None."""
    if bool(usable_cameras(K, w2c).all()):
        return None
    for view in range(K.shape[0]):
        problem = camera_problem(K[view], w2c[view])
        if problem is not None:
            return view, problem
    return None


def check_cameras(K: Tensor, w2c: Tensor, source: str) -> None:
    """A ValueError naming ``source`` and the first bad view unless every camera of K (V, 3, 3)
    and w2c (V, 4, 4) is usable (``camera_problem``)."""
    found = first_camera_problem(K, w2c)
    if found is not None:
        raise ValueError(f"{source}: view {found[0]}: {found[1]}")
