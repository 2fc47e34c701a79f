"""Camera conventions: CO3D/PyTorch3D NDC cameras at the edge, OpenCV pixels everywhere inside.

Inside the library a camera is an intrinsics matrix ``K`` in pixels of the image as it is fed and
a world-to-camera matrix ``w2c`` (4x4, x right, y down, z forward). Pixel coordinates follow
OpenCV too: the centre of pixel (column i, row j) is at (i, j), so an image of width W spans
[-0.5, W - 0.5]. PyTorch3D's NDC (and 3D Gaussian splatting) anchor coordinates at the image's
corner instead; the half pixel between the two is handled here and nowhere else. The ViewDiff
reference uses the same pixel-centre convention (its pose features see cx / W = 127.5 / 256).

Every function takes tensors with any leading batch dimensions and keeps their device and dtype.
Beside this file: cameras made along orbits (``camera_orbits``), checks of cameras read from
files (``camera_checks``), scene normalisation (``scene_normalization``) and the model's per-view
pose condition (``pose_features``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

IntrinsicsFormat = Literal["ndc_isotropic", "ndc_norm_image_bounds"]
INTRINSICS_FORMATS: tuple[str, ...] = get_args(IntrinsicsFormat)

# PyTorch3D's view space is x left, y up, z forward; OpenCV's is x right, y down, z forward.
_FLIP_XY = (-1.0, -1.0, 1.0)


def _ndc_half_extent(
    image_size_hw: tuple[int, int], intrinsics_format: str, like: Tensor
) -> Tensor:
    """Pixels per NDC unit along (x, y) for an image of size (H, W)."""
    if intrinsics_format not in INTRINSICS_FORMATS:
        raise ValueError(
            f"unknown intrinsics format {intrinsics_format!r}; expected one of {INTRINSICS_FORMATS}"
        )
    height, width = image_size_hw
    if intrinsics_format == "ndc_isotropic":
        # CO3Dv2: the shorter side spans [-1, 1], the longer one [-s, s] with s = long / short.
        half = min(height, width) / 2.0
        return like.new_tensor([half, half])
    # CO3Dv1: each axis spans [-1, 1] on its own.
    return like.new_tensor([width / 2.0, height / 2.0])


def _image_centre(image_size_hw: tuple[int, int], like: Tensor) -> Tensor:
    """Pixel coordinates (x, y) of the image's centre point (NDC's origin)."""
    height, width = image_size_hw
    return like.new_tensor([width / 2.0 - 0.5, height / 2.0 - 0.5])


def ndc_to_pixel_intrinsics(
    focal_length: Tensor,
    principal_point: Tensor,
    image_size_hw: tuple[int, int],
    intrinsics_format: str = "ndc_isotropic",
) -> Tensor:
    """PyTorch3D NDC focal length and principal point (..., 2) -> pixel intrinsics K (..., 3, 3)."""
    scale = _ndc_half_extent(image_size_hw, intrinsics_format, focal_length)
    focal_px = focal_length * scale
    # NDC x points left and y up, pixels go right and down: the principal point flips sign.
    principal_px = _image_centre(image_size_hw, focal_length) - principal_point * scale
    K = torch.zeros(
        *focal_length.shape[:-1], 3, 3, dtype=focal_length.dtype, device=focal_length.device
    )
    K[..., 0, 0] = focal_px[..., 0]
    K[..., 1, 1] = focal_px[..., 1]
    K[..., 0, 2] = principal_px[..., 0]
    K[..., 1, 2] = principal_px[..., 1]
    K[..., 2, 2] = 1.0
    return K


def pixel_to_ndc_intrinsics(
    K: Tensor, image_size_hw: tuple[int, int], intrinsics_format: str = "ndc_isotropic"
) -> tuple[Tensor, Tensor]:
    """Pixel intrinsics K (..., 3, 3) -> NDC (focal_length, principal_point), each (..., 2)."""
    if torch.any(K[..., 0, 1] != 0):
        raise ValueError("intrinsics with skew cannot be expressed as CO3D NDC cameras")
    scale = _ndc_half_extent(image_size_hw, intrinsics_format, K)
    focal_px = torch.stack([K[..., 0, 0], K[..., 1, 1]], dim=-1)
    principal_px = torch.stack([K[..., 0, 2], K[..., 1, 2]], dim=-1)
    return focal_px / scale, (_image_centre(image_size_hw, K) - principal_px) / scale


def pytorch3d_to_w2c(R: Tensor, T: Tensor) -> Tensor:
    """PyTorch3D extrinsics (row-vector ``X_view = X_world @ R + T``) -> OpenCV w2c (..., 4, 4)."""
    flip = R.new_tensor(_FLIP_XY)
    w2c = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    # Column form: x_view = R^T x_world + T, then flip x and y into OpenCV's axes.
    w2c[..., :3, :3] = flip[:, None] * R.transpose(-1, -2)
    w2c[..., :3, 3] = flip * T
    w2c[..., 3, 3] = 1.0
    return w2c


def w2c_to_pytorch3d(w2c: Tensor) -> tuple[Tensor, Tensor]:
    """OpenCV w2c (..., 4, 4) -> PyTorch3D (R (..., 3, 3), T (..., 3))."""
    flip = w2c.new_tensor(_FLIP_XY)
    R = (flip[:, None] * w2c[..., :3, :3]).transpose(-1, -2)
    T = flip * w2c[..., :3, 3]
    return R, T


def co3d_to_opencv(
    R: Tensor,
    T: Tensor,
    focal_length: Tensor,
    principal_point: Tensor,
    image_size_hw: tuple[int, int],
    intrinsics_format: str = "ndc_isotropic",
) -> tuple[Tensor, Tensor]:
    """A CO3D viewpoint annotation -> OpenCV (K (..., 3, 3) in pixels, w2c (..., 4, 4))."""
    K = ndc_to_pixel_intrinsics(focal_length, principal_point, image_size_hw, intrinsics_format)
    return K, pytorch3d_to_w2c(R, T)


def opencv_to_co3d(
    K: Tensor,
    w2c: Tensor,
    image_size_hw: tuple[int, int],
    intrinsics_format: str = "ndc_isotropic",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """OpenCV (K, w2c) -> CO3D viewpoint (R, T, focal_length, principal_point)."""
    focal_length, principal_point = pixel_to_ndc_intrinsics(K, image_size_hw, intrinsics_format)
    R, T = w2c_to_pytorch3d(w2c)
    return R, T, focal_length, principal_point


def crop_intrinsics(K: Tensor, left: float, top: float) -> Tensor:
    """Intrinsics of the crop whose top-left pixel is pixel (left, top) of the image."""
    K = K.clone()
    K[..., 0, 2] = K[..., 0, 2] - left
    K[..., 1, 2] = K[..., 1, 2] - top
    return K


def resize_intrinsics(
    K: Tensor, old_size_hw: tuple[int, int], new_size_hw: tuple[int, int]
) -> Tensor:
    """Intrinsics after resizing the whole image from (H, W) to (H', W')."""
    # A resize scales corner-anchored coordinates (u + 0.5), not pixel-centre ones (u).
    scale_x = new_size_hw[1] / old_size_hw[1]
    scale_y = new_size_hw[0] / old_size_hw[0]
    K = K.clone()
    K[..., 0, 0] = K[..., 0, 0] * scale_x
    K[..., 1, 1] = K[..., 1, 1] * scale_y
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * scale_x - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * scale_y - 0.5
    return K


def invert_rigid(transform: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms (..., 4, 4), e.g. w2c -> c2w."""
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(transform)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ transform[..., :3, 3:4])[..., 0]
    inverse[..., 3, 3] = 1.0
    return inverse


def camera_centers(w2c: Tensor) -> Tensor:
    """Camera centres in world coordinates (..., 3) of w2c (..., 4, 4)."""
    rotation = w2c[..., :3, :3]
    return -(rotation.transpose(-1, -2) @ w2c[..., :3, 3:4])[..., 0]


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """Apply 4x4 transforms (..., 4, 4) to points (..., P, 3)."""
    return points @ transform[..., :3, :3].transpose(-1, -2) + transform[..., None, :3, 3]


def project(points: Tensor, K: Tensor, w2c: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points (..., P, 3) to pixels: (uv (..., P, 2), depth along z (..., P))."""
    camera_points = transform_points(w2c, points)
    depth = camera_points[..., 2]
    image_points = camera_points @ K.transpose(-1, -2)
    return image_points[..., :2] / image_points[..., 2:3], depth


def pixel_rays(
    K: Tensor, w2c: Tensor, height: int, width: int, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre: origins and directions, each (..., H, W, 3).

    With ``normalize=False`` the directions have unit depth (z = 1 in the camera), so that
    ``origin + depth * direction`` is the point seen at that depth.
    """
    dtype, device = K.dtype, K.device
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)  # (H*W, 3)
    # Row vectors: d_world = R^T K^-1 p  <=>  d_world^T = p^T (K^-T R), with R = w2c[:3, :3];
    # one (H*W, 3) @ (3, 3) product per camera.
    pixel_to_world = torch.linalg.inv(K).transpose(-1, -2) @ w2c[..., :3, :3]
    directions = (pixels @ pixel_to_world).unflatten(-2, (height, width))  # (..., H, W, 3)
    if normalize:
        directions = torch.nn.functional.normalize(directions, dim=-1)
    origins = camera_centers(w2c)[..., None, None, :].expand_as(directions)
    return origins, directions
