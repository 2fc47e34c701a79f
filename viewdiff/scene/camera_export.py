"""Our OpenCV cameras in the formats of other 3D tools: nerfstudio / instant-ngp
``transforms.json`` and COLMAP's text model.

Axes. Our w2c is OpenCV's (camera x right, y down, z forward), which is also COLMAP's.
``transforms.json`` stores camera-to-world matrices in OpenGL/Blender axes (x right, y up, z
backwards), so c2w_gl = inverse(w2c) @ diag(1, -1, -1, 1). Both tools see the world as given:
our normalised scene is +z up, as nerfstudio's world space is.

Pixels. Our K puts the centre of pixel (column i, row j) at (i, j)
(``viewdiff.cameras.conventions``). The three tools put it at (i + 0.5, j + 0.5), the image's corner
at (0, 0), so their principal point is ours + 0.5 and focal lengths are unchanged. What we checked
in their code:

- nerfstudio: ``Cameras.get_image_coords(pixel_offset=0.5)`` adds 0.5 to the pixel indices
  before ``(x - cx) / fx`` in ``_generate_rays_from_coords``
  (nerfstudio-project/nerfstudio, nerfstudio/cameras/cameras.py). Its data-conventions page
  (docs.nerf.studio/quickstart/data_conventions.html) says the same in words and documents the
  OpenGL camera axes and the top-level-or-per-frame ``fl_x, fl_y, cx, cy, w, h``.
- instant-ngp: ``pixel_to_ray`` samples ``(pixel + ld_random_pixel_offset(0)) / resolution``,
  an offset of exactly 0.5 without jitter, against ``principal_point = cx / w``
  (NVlabs/instant-ngp, include/neural-graphics-primitives/common_device.cuh and
  src/nerf_loader.cu ``read_lens``).
- COLMAP: its SIFT extractor stores VLFeat keypoints as ``x + 0.5, y + 0.5`` (colmap/colmap,
  src/colmap/feature/sift.cc), i.e. image coordinates whose origin is the corner; see also
  colmap/colmap#1515 and the gsplat fix nerfstudio-project/gsplat#151, which add the same 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from viewdiff.cameras.conventions import invert_rigid

PIXEL_CENTRE_OFFSET = 0.5
"""Add to our principal point to get theirs: pixel (0, 0)'s centre is (0.5, 0.5) there."""
OPENCV_TO_OPENGL = (1.0, -1.0, -1.0, 1.0)
"""Diagonal that flips the camera's y and z axes (OpenCV <-> OpenGL/Blender); its own inverse."""
INSTANT_NGP_AABB_SCALE = 1
"""instant-ngp's ``aabb_scale``: 1 for an object inside the unit cube (docs/nerf_dataset_tips.md:
"for small synthetic scenes such as the original NeRF dataset, the default aabb_scale of 1 is
ideal"); its loader's default scale 0.33 and offset 0.5 put our object box [-1, 1]^3 inside."""

TransformsTool = Literal["nerfstudio", "instant-ngp"]


def opencv_w2c_to_opengl_c2w(w2c: Tensor) -> Tensor:
    """OpenCV world-to-camera (..., 4, 4) -> OpenGL/Blender camera-to-world (..., 4, 4)."""
    flip = torch.tensor(OPENCV_TO_OPENGL, dtype=w2c.dtype, device=w2c.device)
    return invert_rigid(w2c) * flip  # right-multiplying by a diagonal scales its columns


def opengl_c2w_to_opencv_w2c(c2w: Tensor) -> Tensor:
    """OpenGL/Blender camera-to-world (..., 4, 4) -> OpenCV world-to-camera (..., 4, 4)."""
    flip = torch.tensor(OPENCV_TO_OPENGL, dtype=c2w.dtype, device=c2w.device)
    return invert_rigid(c2w * flip)


def corner_origin_intrinsics(K: Tensor, image_size_hw: tuple[int, int]) -> dict[str, float]:
    """One K (3, 3) as ``fl_x, fl_y, cx, cy, w, h`` with the pixel centres at +0.5."""
    if float(K[0, 1]) != 0.0:
        raise ValueError(f"K has skew {float(K[0, 1])}; transforms.json and PINHOLE have none")
    height, width = image_size_hw
    return {
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]) + PIXEL_CENTRE_OFFSET,
        "cy": float(K[1, 2]) + PIXEL_CENTRE_OFFSET,
        "w": int(width),
        "h": int(height),
    }


def shared_intrinsics(K: Tensor) -> bool:
    """Whether every view of K (V, 3, 3) has the same intrinsics (to float64 precision)."""
    K = K.double()
    return bool(torch.allclose(K, K[:1].expand_as(K), rtol=0.0, atol=1e-9))


def transforms_json(
    K: Tensor,
    w2c: Tensor,
    image_size_hw: tuple[int, int],
    file_paths: Sequence[str],
    tool: TransformsTool,
) -> dict[str, Any]:
    """The ``transforms.json`` of V views for nerfstudio or instant-ngp: K (V, 3, 3), OpenCV w2c
    (V, 4, 4), the images' paths relative to the file. Intrinsics are top-level when shared."""
    if tool not in ("nerfstudio", "instant-ngp"):
        raise ValueError(f"unknown transforms.json tool {tool!r}: nerfstudio or instant-ngp")
    if not (K.shape[0] == w2c.shape[0] == len(file_paths)):
        raise ValueError(f"{K.shape[0]} K, {w2c.shape[0]} w2c and {len(file_paths)} image paths")
    c2w = opencv_w2c_to_opengl_c2w(w2c.double())
    shared = shared_intrinsics(K)
    document: dict[str, Any] = {}
    if tool == "nerfstudio":
        # OPENCV with every distortion coefficient left out: nerfstudio reads them as 0.
        document["camera_model"] = "OPENCV"
    else:
        document["aabb_scale"] = INSTANT_NGP_AABB_SCALE
    if shared:
        document |= corner_origin_intrinsics(K[0].double(), image_size_hw)
    frames = []
    for view, path in enumerate(file_paths):
        frame: dict[str, Any] = {"file_path": path, "transform_matrix": c2w[view].tolist()}
        if not shared:
            frame |= corner_origin_intrinsics(K[view].double(), image_size_hw)
        frames.append(frame)
    document["frames"] = frames
    return document


def rotation_to_quaternion(R: Tensor) -> Tensor:
    """Unit quaternions (..., 4), wxyz with w >= 0 (COLMAP's order), of rotations (..., 3, 3)."""
    m = R.double()
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four expressions of 4 q_k q, one per component k; the one with the largest 4 q_k^2 on its
    # diagonal divides by the largest |q_k| (Shepperd 1978), so no rotation loses precision.
    candidates = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], dim=-1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4 components)
    best = torch.diagonal(candidates, dim1=-2, dim2=-1).argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.nn.functional.normalize(candidates.gather(-2, index)[..., 0, :], dim=-1)
    # q and -q are the same rotation: COLMAP's writer keeps w >= 0 too.
    return torch.where(q[..., :1] < 0, -q, q).to(R.dtype)


COLMAP_CAMERAS_HEADER = (
    "# Camera list with one line of data per camera:\n"
    "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
    "# Number of cameras: {count}\n"
)
COLMAP_IMAGES_HEADER = (
    "# Image list with two lines of data per image:\n"
    "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
    "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
    "# Number of images: {count}, mean observations per image: 0\n"
)
COLMAP_POINTS_HEADER = (
    "# 3D point list with one line of data per point:\n"
    "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
    "# Number of points: 0, mean track length: 0\n"
)


def colmap_text_model(
    K: Tensor, w2c: Tensor, image_size_hw: tuple[int, int], names: Sequence[str]
) -> dict[str, str]:
    """COLMAP's text model of V posed views and no points: {cameras.txt, images.txt,
    points3D.txt}. One PINHOLE camera when the intrinsics are shared, else one per view;
    ``names`` are the images' paths relative to the image folder."""
    if not (K.shape[0] == w2c.shape[0] == len(names)):
        raise ValueError(f"{K.shape[0]} K, {w2c.shape[0]} w2c and {len(names)} image names")
    shared = shared_intrinsics(K)
    camera_ids = [1] * len(names) if shared else list(range(1, len(names) + 1))
    camera_lines = []
    for view in [0] if shared else range(len(names)):
        p = corner_origin_intrinsics(K[view].double(), image_size_hw)
        params = " ".join(repr(p[key]) for key in ("fl_x", "fl_y", "cx", "cy"))
        camera_lines.append(f"{camera_ids[view]} PINHOLE {p['w']} {p['h']} {params}\n")
    w2c = w2c.double()
    quaternions = rotation_to_quaternion(w2c[:, :3, :3])
    image_lines = []
    for view, name in enumerate(names):
        if any(character.isspace() for character in name):
            raise ValueError(f"COLMAP image names cannot contain spaces, got {name!r}")
        pose = " ".join(repr(v) for v in [*quaternions[view].tolist(), *w2c[view, :3, 3].tolist()])
        image_lines.append(f"{view + 1} {pose} {camera_ids[view]} {name}\n\n")  # no 2D points
    return {
        "cameras.txt": COLMAP_CAMERAS_HEADER.format(count=len(camera_lines))
        + "".join(camera_lines),
        "images.txt": COLMAP_IMAGES_HEADER.format(count=len(names)) + "".join(image_lines),
        "points3D.txt": COLMAP_POINTS_HEADER,
    }
