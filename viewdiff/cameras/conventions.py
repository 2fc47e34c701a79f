"""Camera conventions: CO3D/PyTorch3D NDC cameras at the edge, OpenCV pixels everywhere inside.

Inside the library a camera is an intrinsics matrix ``K`` in pixels of the image as it is fed and
a world-to-camera matrix ``w2c`` (4x4, x right, y down, z forward). Pixel coordinates follow
OpenCV too: the centre of pixel (column i, row j) is at (i, j), so an image of width W spans
[-0.5, W - 0.5]. PyTorch3D's NDC (and 3D Gaussian splatting) anchor coordinates at the image's
corner instead; the half pixel between the two is handled here and nowhere else. The ViewDiff
reference uses the same pixel-centre convention (its pose features see cx / W = 127.5 / 256).

Every function takes tensors with any leading batch dimensions and keeps their device and dtype.
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


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenCV w2c (..., 4, 4) of cameras at ``eye`` looking at ``target`` with ``up`` upwards."""
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    if torch.any(right.norm(dim=-1) < 1e-6 * up.norm(dim=-1)):
        raise ValueError("look_at: the viewing direction is parallel to the up vector")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world
    w2c = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    w2c[..., :3, :3] = rotation
    w2c[..., :3, 3] = -(rotation @ eye[..., None])[..., 0]
    w2c[..., 3, 3] = 1.0
    return w2c


def spherical_to_cartesian(azimuth: Tensor, elevation: Tensor, radius: Tensor) -> Tensor:
    """Points (..., 3) at azimuth (from +x towards +y) and elevation (above z=0), in radians."""
    return torch.stack(
        [
            radius * torch.cos(elevation) * torch.cos(azimuth),
            radius * torch.cos(elevation) * torch.sin(azimuth),
            radius * torch.sin(elevation),
        ],
        dim=-1,
    )


def cartesian_to_spherical(points: Tensor) -> Tensor:
    """Points (..., 3) -> (azimuth, elevation, radius) (..., 3), the inverse of the above."""
    radius = points.norm(dim=-1)
    azimuth = torch.atan2(points[..., 1], points[..., 0])
    elevation = torch.asin((points[..., 2] / radius.clamp_min(1e-12)).clamp(-1.0, 1.0))
    return torch.stack([azimuth, elevation, radius], dim=-1)


def orbit(
    num_views: int,
    elevation_deg: float = 20.0,
    radius: float = 2.0,
    look_at_point: tuple[float, float, float] = (0.0, 0.0, 0.0),
    start_azimuth_deg: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """w2c (num_views, 4, 4) evenly spaced on a 360-degree circle around +z (the world's up)."""
    if num_views < 1:
        raise ValueError(f"orbit needs at least one view, got {num_views}")
    azimuth = torch.deg2rad(
        start_azimuth_deg + torch.arange(num_views, dtype=dtype, device=device) * 360.0 / num_views
    )
    elevation = torch.full_like(azimuth, elevation_deg * torch.pi / 180.0)
    target = torch.tensor(look_at_point, dtype=dtype, device=device)
    eye = target + spherical_to_cartesian(azimuth, elevation, torch.full_like(azimuth, radius))
    up = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device)
    return look_at(eye, target.expand_as(eye), up)


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


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> Tensor:
    """Pinhole K (3, 3) with the given horizontal field of view and the principal point centred."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    focal = (width / 2.0) / torch.tan(
        torch.deg2rad(torch.tensor(fov_deg / 2.0, dtype=torch.float64))
    )
    K = torch.eye(3, dtype=torch.float64)
    K[0, 0] = K[1, 1] = focal
    K[0, 2], K[1, 2] = width / 2.0 - 0.5, height / 2.0 - 0.5
    return K.float()


# Scene normalisation (the reference's CO3D recentring): level the cameras' plane, centre the
# object box, scale it to a fixed size. The result is a similarity transform of the world.


def camera_plane_rotation(w2c: Tensor) -> Tensor:
    """Rotation (3, 3) taking world directions to a frame whose +z is the cameras' plane normal.

    The normal is the least-variance axis of the camera centres (V >= 3). Unlike the reference,
    its sign is fixed so that +z points where the cameras' up (-y) points on average, and the
    frame is right-handed, so that "up" means the same in every sequence.
    """
    if w2c.shape[-3] < 3:
        raise ValueError(
            f"levelling the camera plane needs at least 3 cameras, got {w2c.shape[-3]}"
        )
    centers = camera_centers(w2c)
    _, _, axes = torch.linalg.svd(centers - centers.mean(dim=-2, keepdim=True), full_matrices=False)
    major, normal = axes[..., 0, :], axes[..., 2, :]
    camera_up = -w2c[..., 1, :3].mean(dim=-2)  # row 1 of w2c: the camera y (down) axis in world
    normal = torch.where((normal * camera_up).sum(-1, keepdim=True) < 0, -normal, normal)
    return torch.stack([major, torch.linalg.cross(normal, major, dim=-1), normal], dim=-2)


def scene_normalization(w2c: Tensor, object_points: Tensor, box_size: float = 2.0) -> Tensor:
    """Similarity (4, 4) from world to the normalised scene: cameras levelled, object box centred.

    ``object_points`` (P, 3) are the object's points in world (a point cloud, or box corners);
    their axis-aligned box in the levelled frame is centred at the origin and its longest side
    scaled to ``box_size`` (2: the object fits in [-1, 1]^3, the projection layer's grid).
    """
    rotation = camera_plane_rotation(w2c)
    levelled = object_points @ rotation.transpose(-1, -2)
    low, high = levelled.amin(dim=-2), levelled.amax(dim=-2)
    extent = (high - low).amax(dim=-1)
    if torch.any(extent <= 0):
        raise ValueError("scene normalisation needs object points that span a non-empty box")
    scale = box_size / extent
    similarity = torch.zeros(*w2c.shape[:-3], 4, 4, dtype=w2c.dtype, device=w2c.device)
    similarity[..., :3, :3] = scale[..., None, None] * rotation
    similarity[..., :3, 3] = -scale[..., None] * (low + high) / 2.0
    similarity[..., 3, 3] = 1.0
    return similarity


def normalize_w2c(w2c: Tensor, similarity: Tensor) -> Tensor:
    """Cameras w2c (..., V, 4, 4) expressed in the world mapped by ``similarity`` (..., 4, 4)."""
    scale = torch.linalg.det(similarity[..., :3, :3]).abs().pow(1.0 / 3.0)
    # x_cam = w2c S^-1 x' is the camera frame shrunk by 1/scale; scaling it back keeps K valid.
    moved = w2c @ torch.linalg.inv(similarity)[..., None, :, :]
    moved[..., :3, :] = moved[..., :3, :] * scale[..., None, None, None]
    return moved


# The per-view condition of the pose-conditioned LoRA (reference: model/util.py, get_T):
# [theta, sin(azimuth), cos(azimuth), radius, fx/W, fy/H, cx/W, cy/H, intensity mean, var].
POSE_FEATURE_DIM = 10


def intensity_stats(images: Tensor) -> Tensor:
    """Mean and (unbiased) variance over channels and pixels of images (..., C, H, W): (..., 2)."""
    pixels = images.flatten(-3)
    # Two passes: several times faster on CPU than torch.var_mean's single pass.
    mean = pixels.mean(dim=-1, keepdim=True)
    var = (pixels - mean).square().sum(dim=-1) / (pixels.shape[-1] - 1)
    return torch.stack([mean[..., 0], var], dim=-1)


def pose_features(
    K: Tensor, w2c: Tensor, image_size_hw: tuple[int, int], stats: Tensor | None = None
) -> Tensor:
    """The reference's 10-d per-view condition (..., 10) of cameras in the normalised scene.

    The camera position enters as spherical coordinates around the normalised object (polar
    angle from +z, azimuth as sin/cos, radius); intrinsics as fractions of the image size;
    ``stats`` (..., 2) are ``intensity_stats`` of the views, zeros when unknown (the reference
    zeroes them at test time).
    """
    height, width = image_size_hw
    center = camera_centers(w2c)
    theta = torch.atan2(center[..., :2].norm(dim=-1), center[..., 2])
    azimuth = torch.atan2(center[..., 1], center[..., 0])
    intrinsics = torch.stack(
        [K[..., 0, 0] / width, K[..., 1, 1] / height, K[..., 0, 2] / width, K[..., 1, 2] / height],
        dim=-1,
    )
    position = torch.stack(
        [theta, torch.sin(azimuth), torch.cos(azimuth), center.norm(dim=-1)], dim=-1
    )
    if stats is None:
        stats = center.new_zeros(2)
    batch = torch.broadcast_shapes(position.shape[:-1], intrinsics.shape[:-1], stats.shape[:-1])
    parts = [position, intrinsics, stats.to(center.dtype)]
    return torch.cat([part.expand(*batch, part.shape[-1]) for part in parts], dim=-1)
