"""Real spherical harmonics up to degree 3: the view-dependent colour of a 3D Gaussian.

Constants, basis order and signs are those of 3D Gaussian Splatting (Kerbl et al. 2023, Sec. 4,
after Plenoxels) and gsplat, so that coefficients read from another tool's PLY mean the same
colours here. The colour of a Gaussian seen along the unit direction ``d`` (from the camera
centre to the Gaussian) is ``max(sum_k c_k Y_k(d) + 0.5, 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_SH_DEGREE = 3
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of SH basis functions up to ``degree``: (degree + 1)^2."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    return (degree + 1) ** 2


def sh_degree_of(num_bases: int) -> int:
    """The degree whose basis count is ``num_bases`` (1, 4, 9 or 16)."""
    for degree in range(MAX_SH_DEGREE + 1):
        if num_sh_bases(degree) == num_bases:
            return degree
    raise ValueError(f"{num_bases} SH coefficients per channel is not (degree + 1)^2 for 0..3")


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient whose colour is ``rgb`` (in [0, 1]) from every direction."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """The colour (before clamping) of a degree-0 coefficient."""
    return sh0 * SH_C0 + 0.5


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """The SH basis (..., (degree+1)^2) at unit directions (..., 3)."""
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        bases += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        bases += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(bases, dim=-1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Colours (..., 3) of SH coefficients (..., K, 3) seen along directions (..., 3).

    Only the first (degree+1)^2 coefficients are used (progressive SH training activates the
    bands one by one); ``dirs`` need not be normalised. The result is clamped at 0 as in 3DGS.
    """
    count = num_sh_bases(degree)
    if coeffs.shape[-2] < count:
        raise ValueError(f"SH degree {degree} needs {count} coefficients, got {coeffs.shape[-2]}")
    bases = sh_bases(degree, torch.nn.functional.normalize(dirs, dim=-1))  # (..., count)
    colours = (bases[..., None] * coeffs[..., :count, :]).sum(dim=-2)
    return torch.clamp_min(colours + 0.5, 0.0)
