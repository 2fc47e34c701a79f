"""A 3D Gaussian scene: parameters, initialisation, and the standard 3DGS PLY layout.

Parameters are stored as 3D Gaussian Splatting (Kerbl et al. 2023) stores them, before their
activations, so that they can be optimised without constraints and written to PLY as they are:
``means`` (N, 3) in world units, ``log_scales`` (N, 3) (scale = exp), ``quats`` (N, 4) wxyz
(rotation = normalised quaternion), ``opacity_logits`` (N,) (opacity = sigmoid), and colour as
spherical harmonics, ``f_dc`` (N, 3) and ``f_rest`` (N, (degree+1)^2 - 1, 3).

The PLY layout is the original code's (``GaussianModel.save_ply``): float32 vertex properties
x, y, z, nx, ny, nz, f_dc_0..2, f_rest_0..(3*(K-1)-1), opacity, scale_0..2, rot_0..3, where
f_rest is channel-major (all red coefficients, then green, then blue), so that files open in the
common splat viewers and load from other 3DGS tools.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from viewdiff.ply import read_ply, write_ply
from viewdiff.scene.sh import num_sh_bases, rgb_to_sh0, sh_degree_of

_FIELDS = ("means", "log_scales", "quats", "opacity_logits", "f_dc", "f_rest")


@dataclasses.dataclass
class GaussianScene:
    """N anisotropic 3D Gaussians with SH colour, stored before activation (as 3DGS does)."""

    means: Tensor  # (N, 3)
    log_scales: Tensor  # (N, 3)
    quats: Tensor  # (N, 4), wxyz
    opacity_logits: Tensor  # (N,)
    f_dc: Tensor  # (N, 3)
    f_rest: Tensor  # (N, K - 1, 3), K = (sh_degree + 1)^2

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3),
            "log_scales": (n, 3),
            "quats": (n, 4),
            "opacity_logits": (n,),
            "f_dc": (n, 3),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                got = tuple(getattr(self, name).shape)
                raise ValueError(f"GaussianScene.{name}: expected shape {shape}, got {got}")
        rest = self.f_rest
        if rest.dim() != 3 or rest.shape[0] != n or rest.shape[2] != 3:
            got = tuple(rest.shape)
            raise ValueError(f"GaussianScene.f_rest: expected shape ({n}, K-1, 3), got {got}")
        if rest.shape[1] + 1 not in (1, 4, 9, 16):
            count = rest.shape[1]
            raise ValueError(
                f"GaussianScene.f_rest: {count} coefficients per channel, not 0/3/8/15"
            )

    @property
    def num_gaussians(self) -> int:
        """N."""
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        """The highest SH degree the colours carry (0..3)."""
        return sh_degree_of(self.f_rest.shape[1] + 1)

    def scales(self) -> Tensor:
        """Standard deviations along the Gaussian's axes (N, 3)."""
        return torch.exp(self.log_scales)

    def opacities(self) -> Tensor:
        """Opacities in (0, 1) (N,)."""
        return torch.sigmoid(self.opacity_logits)

    def sh_coeffs(self) -> Tensor:
        """All SH coefficients (N, K, 3), DC first."""
        return torch.cat([self.f_dc[:, None, :], self.f_rest], dim=1)

    def covariances(self) -> Tensor:
        """World-space covariances (N, 3, 3): Sigma = R S S^T R^T (3DGS Eq. 6)."""
        return covariance_from(self.log_scales, self.quats)

    def tensors(self) -> dict[str, Tensor]:
        """The parameters by name, in a fixed order."""
        return {name: getattr(self, name) for name in _FIELDS}

    def map(self, fn: Callable[[Tensor], Tensor]) -> GaussianScene:
        """A scene whose every parameter tensor is ``fn(tensor)``."""
        return GaussianScene(**{name: fn(value) for name, value in self.tensors().items()})

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianScene:
        """The scene on another device / in another floating dtype."""
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> GaussianScene:
        """A copy of the values, cut from any autograd graph."""
        return self.map(lambda t: t.detach().clone())

    def select(self, index: Tensor) -> GaussianScene:
        """The Gaussians picked by a boolean mask (N,) or an index tensor."""
        return self.map(lambda t: t[index])

    def with_sh_degree(self, degree: int) -> GaussianScene:
        """The same scene with SH colours truncated or zero-padded to ``degree``."""
        count = num_sh_bases(degree) - 1
        rest = self.f_rest[:, :count]
        if rest.shape[1] < count:
            pad = rest.new_zeros(rest.shape[0], count - rest.shape[1], 3)
            rest = torch.cat([rest, pad], dim=1)
        return dataclasses.replace(self, f_rest=rest)

    @staticmethod
    def cat(scenes: list[GaussianScene]) -> GaussianScene:
        """All Gaussians of several scenes of one SH degree."""
        return GaussianScene(
            **{name: torch.cat([getattr(s, name) for s in scenes]) for name in _FIELDS}
        )

    @staticmethod
    def from_points(
        points: Tensor,
        colors: Tensor | None = None,
        sh_degree: int = 3,
        opacity: float = 0.1,
    ) -> GaussianScene:
        """Isotropic Gaussians on points (N, 3) with colours (N, 3) in [0, 1], as 3DGS starts.

        Each scale is the root mean squared distance to the 3 nearest neighbours, the opacity
        0.1, the rotation the identity (3DGS ``create_from_pcd``).
        """
        if points.dim() != 2 or points.shape[1] != 3 or points.shape[0] < 2:
            raise ValueError(f"points must be (N >= 2, 3), got {tuple(points.shape)}")
        n = points.shape[0]
        if colors is None:
            colors = torch.full_like(points, 0.5)
        if colors.shape != points.shape:
            raise ValueError(f"colors must be {tuple(points.shape)}, got {tuple(colors.shape)}")
        dist2 = nearest_neighbour_sq_distances(points).clamp_min(1e-7)
        quats = points.new_zeros(n, 4)
        quats[:, 0] = 1.0
        return GaussianScene(
            means=points.clone(),
            log_scales=(0.5 * torch.log(dist2))[:, None].repeat(1, 3),
            quats=quats,
            opacity_logits=torch.full_like(points[:, 0], math.log(opacity / (1.0 - opacity))),
            f_dc=rgb_to_sh0(colors.to(points.dtype)),
            f_rest=points.new_zeros(n, num_sh_bases(sh_degree) - 1, 3),
        )

    @staticmethod
    def random_in_sphere(
        num_gaussians: int,
        radius: float = 1.0,
        sh_degree: int = 3,
        opacity: float = 0.1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> GaussianScene:
        """Gaussians at uniform random points in a ball, with random colours (SDS's start)."""
        # The generator draws on the CPU, so that a seed gives the same scene on every device.
        directions = torch.randn(num_gaussians, 3, generator=generator, dtype=torch.float64)
        directions = torch.nn.functional.normalize(directions, dim=-1)
        distances = radius * torch.rand(num_gaussians, 1, generator=generator).double() ** (1 / 3)
        colors = torch.rand(num_gaussians, 3, generator=generator, dtype=torch.float64)
        points = (directions * distances).to(device=device, dtype=dtype)
        return GaussianScene.from_points(points, colors.to(points), sh_degree, opacity)


def random_scene(
    num_gaussians: int,
    half_size: float = 0.6,
    sh_degree: int = 1,
    generator: torch.Generator | None = None,
) -> GaussianScene:
    """A made-up object: varied anisotropic Gaussians in a cube, mostly opaque, view-dependent.

    Ground truth for tests, benchmarks and demos (fitting it back from its renders), float32.
    """
    n = num_gaussians
    means = (torch.rand(n, 3, generator=generator) * 2 - 1) * half_size
    log_scales = torch.log(0.04 + 0.12 * torch.rand(n, 3, generator=generator))
    quats = torch.randn(n, 4, generator=generator)
    opacities = 0.6 + 0.35 * torch.rand(n, generator=generator)
    f_dc = rgb_to_sh0(torch.rand(n, 3, generator=generator))
    f_rest = 0.15 * torch.randn(n, num_sh_bases(sh_degree) - 1, 3, generator=generator)
    logits = torch.log(opacities / (1 - opacities))
    return GaussianScene(means, log_scales, quats, logits, f_dc, f_rest)


def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) in wxyz order (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def covariance_from(log_scales: Tensor, quats: Tensor) -> Tensor:
    """Covariances (..., 3, 3) R S S^T R^T of log-scales (..., 3) and wxyz quaternions (..., 4)."""
    M = quaternion_to_rotation(quats) * torch.exp(log_scales)[..., None, :]  # R S
    return M @ M.transpose(-1, -2)


def nearest_neighbour_sq_distances(points: Tensor, k: int = 3) -> Tensor:
    """Mean squared distance (N,) from each point to its k nearest other points (exact).

    What 3DGS's ``create_from_pcd`` averages (``distCUDA2``, k = 3), from a k-d tree (scipy's
    ``cKDTree``) in float64 on the CPU: queried for k + 1 neighbours, of which the first, at
    distance 0, is the point itself (or a duplicate of it, at the same distance).
    """
    k = min(k, points.shape[0] - 1)
    coords = points.detach().to(device="cpu", dtype=torch.float64).numpy()
    distances, _ = cKDTree(coords).query(coords, k=k + 1)  # (N, k + 1), ascending
    mean_sq = np.square(distances.reshape(len(coords), k + 1)[:, 1:]).mean(axis=1)
    return torch.from_numpy(mean_sq).to(device=points.device, dtype=points.dtype)


def read_point_cloud(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """Points (N, 3) and colours (N, 3) in [0, 1] (or None) of a PLY point cloud (e.g. CO3D)."""
    columns = read_ply(path)
    missing = [name for name in ("x", "y", "z") if name not in columns]
    if missing:
        raise ValueError(f"{path}: point cloud lacks properties {missing}")
    points = torch.from_numpy(np.stack([columns[c] for c in "xyz"], axis=1).astype(np.float32))
    if not all(c in columns for c in ("red", "green", "blue")):
        return points, None
    rgb = np.stack([columns[c] for c in ("red", "green", "blue")], axis=1).astype(np.float32)
    # 8-bit colours are 0..255; float colours are taken as already in [0, 1].
    scale = 255.0 if columns["red"].dtype == np.uint8 else 1.0
    return points, torch.from_numpy(rgb / scale)


def ply_property_names(sh_degree: int) -> list[str]:
    """The vertex properties of a 3DGS PLY of the given SH degree, in the original's order."""
    rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def write_gaussian_ply(path: str | Path, scene: GaussianScene) -> None:
    """Write the scene as a standard 3DGS PLY (float32, binary little endian)."""
    s = scene.detach().to("cpu", torch.float32)
    n = s.num_gaussians
    # Channel-major f_rest, as the original's features_rest.transpose(1, 2).flatten(1).
    f_rest = s.f_rest.transpose(1, 2).reshape(n, -1)
    normals = torch.zeros(n, 3)  # unused by 3DGS, kept for the layout
    columns = [s.means, normals, s.f_dc, f_rest, s.opacity_logits[:, None], s.log_scales, s.quats]
    table = torch.cat(columns, dim=1).numpy()
    names = ply_property_names(s.sh_degree)
    write_ply(path, {name: table[:, i].copy() for i, name in enumerate(names)})


def read_gaussian_ply(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> GaussianScene:
    """Read a 3DGS PLY (from this code or another 3DGS tool) into a scene."""
    columns = read_ply(path)
    required = ply_property_names(0)
    missing = [name for name in required if name not in columns and name[0] != "n"]
    if missing:
        raise ValueError(f"{path}: not a 3D Gaussian splatting PLY, missing properties {missing}")
    rest_names = sorted(
        (name for name in columns if name.startswith("f_rest_")), key=lambda s: int(s[7:])
    )
    if rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]:
        raise ValueError(f"{path}: f_rest_* properties are not numbered 0..{len(rest_names) - 1}")
    if len(rest_names) % 3 != 0:
        raise ValueError(f"{path}: {len(rest_names)} f_rest properties is not 3 per SH basis")
    per_channel = len(rest_names) // 3
    if per_channel + 1 not in (1, 4, 9, 16):
        raise ValueError(f"{path}: {len(rest_names)} f_rest properties match no SH degree 0..3")

    def stack(names: list[str]) -> Tensor:
        if not names:
            return torch.zeros(len(columns["x"]), 0)
        array = np.stack([columns[name].astype(np.float32) for name in names], axis=1)
        return torch.from_numpy(array)

    n = len(columns["x"])
    if n == 0:
        raise ValueError(f"{path}: the scene has no Gaussians")
    for name, values in columns.items():
        if np.issubdtype(values.dtype, np.floating):
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise ValueError(
                    f"{path}: property {name!r} is NaN or inf in {bad} of {n} Gaussians"
                )
    scene = GaussianScene(
        means=stack(["x", "y", "z"]),
        log_scales=stack(["scale_0", "scale_1", "scale_2"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=stack(["opacity"])[:, 0],
        f_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
        f_rest=stack(rest_names).reshape(n, 3, per_channel).transpose(1, 2).contiguous(),
    )
    return scene.to(device=device, dtype=dtype)
