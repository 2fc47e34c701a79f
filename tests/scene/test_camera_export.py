"""Cameras for other tools: what ``infer.py export`` writes re-projects points like cameras.json.

Each read-back projects with the other tool's own camera model (nerfstudio's OpenGL camera
looking down -z, COLMAP's quaternion pose), with its pixel centres at +0.5.
"""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.cameras_json import read_cameras, write_cameras
from viewdiff.cameras.conventions import camera_centers, project
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands.export import add_export_command
from viewdiff.scene.camera_export import (
    colmap_text_model,
    corner_origin_intrinsics,
    opencv_w2c_to_opengl_c2w,
    opengl_c2w_to_opencv_w2c,
    rotation_to_quaternion,
)
from viewdiff.scene.gaussians import quaternion_to_rotation

HEIGHT, WIDTH, VIEWS = 24, 32, 5
POINTS = torch.rand(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1


def cameras(varied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """K (5, 3, 3) and w2c (5, 4, 4) around an off-origin point; ``varied``: two views differ."""
    w2c = orbit(VIEWS, 25.0, 3.5, look_at_point=(0.1, -0.2, 0.05), start_azimuth_deg=10.0)
    K = intrinsics_from_fov(50.0, HEIGHT, WIDTH).double().repeat(VIEWS, 1, 1)
    if varied:
        K[2, 0, 0] *= 1.1
        K[2, 1, 1] *= 0.95
        K[2, 0, 2] += 1.25
        K[3, 1, 2] -= 2.0
    return K, w2c.double()


def generation_folder(root, varied: bool):
    """A folder as save_generation leaves it: views/view_XXX.png and cameras.json."""
    K, w2c = cameras(varied)
    (root / "views").mkdir(parents=True)
    for view in range(VIEWS):
        pixels = np.full((HEIGHT, WIDTH, 3), 40 * view, np.uint8)
        Image.fromarray(pixels).save(root / "views" / f"view_{view:03d}.png")
    write_cameras(root / "cameras.json", K, w2c, (HEIGHT, WIDTH))
    return root


def export(folder, fmt: str, out) -> None:
    """Run ``infer.py export`` through its own parser."""
    parser = argparse.ArgumentParser()
    add_export_command(parser.add_subparsers())
    args = parser.parse_args(["export", "--views", str(folder), "--format", fmt, "--out", str(out)])
    args.run(args)


def our_pixels(folder) -> torch.Tensor:
    """The points seen through cameras.json (OpenCV, K @ w2c): (V, P, 2)."""
    K, w2c, _ = read_cameras(folder / "cameras.json")
    return project(POINTS, K[:, None], w2c[:, None])[0][:, 0]


def nerfstudio_pixels(c2w: torch.Tensor, intrinsics: dict) -> torch.Tensor:
    """The points seen by nerfstudio's camera: OpenGL c2w, its ray through image coordinate
    (u, v) going along ((u - cx) / fx, -(v - cy) / fy, -1); our pixel index is u - 0.5."""
    camera = (POINTS - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (p - t): x right, y up, z back
    u = intrinsics["cx"] + intrinsics["fl_x"] * camera[:, 0] / -camera[:, 2]
    v = intrinsics["cy"] - intrinsics["fl_y"] * camera[:, 1] / -camera[:, 2]
    return torch.stack([u, v], dim=-1) - 0.5


@pytest.mark.parametrize("varied", [False, True], ids=["shared", "per-frame"])
@pytest.mark.parametrize("tool", ["nerfstudio", "instant-ngp"])
def test_transforms_json_reprojects_like_cameras_json(tmp_path, tool, varied):
    folder = generation_folder(tmp_path / "generation", varied)
    export(folder, tool, tmp_path / "out")
    document = json.loads((tmp_path / "out" / "transforms.json").read_text())
    keys = ("fl_x", "fl_y", "cx", "cy", "w", "h")
    assert all((key in document) != varied for key in keys)
    if tool == "nerfstudio":
        assert document["camera_model"] == "OPENCV" and "aabb_scale" not in document
    else:
        assert document["aabb_scale"] == 1 and "camera_model" not in document
    expected = our_pixels(folder)
    for view, frame in enumerate(document["frames"]):
        assert all((key in frame) == varied for key in keys)
        intrinsics = {key: frame.get(key, document.get(key)) for key in keys}
        assert (intrinsics["w"], intrinsics["h"]) == (WIDTH, HEIGHT)
        c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
        pixels = nerfstudio_pixels(c2w, intrinsics)
        torch.testing.assert_close(pixels, expected[view], atol=1e-4, rtol=0)
        copied = tmp_path / "out" / frame["file_path"]
        assert frame["file_path"] == f"images/view_{view:03d}.png"
        assert copied.read_bytes() == (folder / "views" / copied.name).read_bytes()
        assert "mask_path" not in frame  # generation folders have no masks


def read_colmap(model) -> tuple[dict, list]:
    """cameras.txt as {id: (model, w, h, params)} and images.txt as [(q, t, camera, name)]."""
    cameras = {}
    for line in (model / "cameras.txt").read_text().splitlines():
        if not line.startswith("#"):
            camera_id, kind, width, height, *params = line.split()
            cameras[int(camera_id)] = (kind, int(width), int(height), [float(p) for p in params])
    lines = [line for line in (model / "images.txt").read_text().split("\n")[:-1]]
    lines = [line for line in lines if not line.startswith("#")]
    assert all(not line for line in lines[1::2]), "every image's POINTS2D line is empty"
    images = []
    for line in lines[::2]:
        _, qw, qx, qy, qz, tx, ty, tz, camera_id, name = line.split()
        q = torch.tensor([float(v) for v in (qw, qx, qy, qz)], dtype=torch.float64)
        t = torch.tensor([float(v) for v in (tx, ty, tz)], dtype=torch.float64)
        images.append((q, t, int(camera_id), name))
    return cameras, images


@pytest.mark.parametrize("varied", [False, True], ids=["shared", "per-frame"])
def test_colmap_model_reprojects_like_cameras_json(tmp_path, varied):
    folder = generation_folder(tmp_path / "generation", varied)
    export(folder, "colmap", tmp_path / "out")
    model = tmp_path / "out" / "sparse" / "0"
    cameras, images = read_colmap(model)
    assert len(cameras) == (VIEWS if varied else 1) and len(images) == VIEWS
    points_file = (model / "points3D.txt").read_text().splitlines()
    assert points_file and all(line.startswith("#") for line in points_file)
    expected = our_pixels(folder)
    for view, (q, t, camera_id, name) in enumerate(images):
        kind, width, height, (fx, fy, cx, cy) = cameras[camera_id]
        assert (kind, width, height) == ("PINHOLE", WIDTH, HEIGHT)
        assert q[0] >= 0 and name == f"view_{view:03d}.png"
        assert (tmp_path / "out" / "images" / name).is_file()
        camera = POINTS @ quaternion_to_rotation(q).T + t  # COLMAP: x = R p + t, OpenCV axes
        u = fx * camera[:, 0] / camera[:, 2] + cx
        v = fy * camera[:, 1] / camera[:, 2] + cy
        pixels = torch.stack([u, v], dim=-1) - 0.5  # COLMAP's pixel (0, 0) centre is (0.5, 0.5)
        torch.testing.assert_close(pixels, expected[view], atol=1e-4, rtol=0)


def test_quaternions_round_trip_with_w_at_least_zero():
    generator = torch.Generator().manual_seed(1)
    q, r = torch.linalg.qr(torch.randn(200, 3, 3, generator=generator, dtype=torch.float64))
    random = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    random = random * torch.sign(torch.linalg.det(random))[:, None, None]  # det +1
    half_turns = [
        quaternion_to_rotation(torch.tensor(axis, dtype=torch.float64))
        for axis in ([0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0], [0.01, 1, -1, 1])
    ]
    rotations = torch.cat([random, torch.stack(half_turns), torch.eye(3)[None].double()])
    quaternions = rotation_to_quaternion(rotations)
    torch.testing.assert_close(quaternion_to_rotation(quaternions), rotations, atol=1e-12, rtol=0)
    assert bool((quaternions[:, 0] >= 0).all())
    torch.testing.assert_close(quaternions.norm(dim=-1), torch.ones(len(rotations)).double())
    quarter_z = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    half = math.sqrt(0.5)
    expected = torch.tensor([half, 0.0, 0.0, half])
    torch.testing.assert_close(rotation_to_quaternion(quarter_z), expected)


def test_opengl_cameras_look_down_minus_z_with_y_up():
    K, w2c = cameras(varied=False)
    c2w = opencv_w2c_to_opengl_c2w(w2c)
    looking = torch.nn.functional.normalize(w2c.new_tensor([0.1, -0.2, 0.05]) - c2w[:, :3, 3])
    torch.testing.assert_close(-c2w[:, :3, 2], looking)
    torch.testing.assert_close(c2w[:, :3, 3], camera_centers(w2c))
    assert bool((c2w[:, 2, 1] > 0).all())  # image up is world up (+z) for cameras above
    torch.testing.assert_close(opengl_c2w_to_opencv_w2c(c2w), w2c)


def test_intrinsics_shift_the_principal_point_by_half_a_pixel_and_refuse_skew():
    K = intrinsics_from_fov(60.0, HEIGHT, WIDTH)
    assert corner_origin_intrinsics(K, (HEIGHT, WIDTH))["cx"] == WIDTH / 2  # centred: W / 2
    assert corner_origin_intrinsics(K, (HEIGHT, WIDTH))["cy"] == HEIGHT / 2
    K[0, 1] = 0.5
    with pytest.raises(ValueError, match="skew"):
        corner_origin_intrinsics(K, (HEIGHT, WIDTH))
    K, w2c = cameras(varied=False)
    with pytest.raises(ValueError, match="spaces"):
        colmap_text_model(K[:1], w2c[:1], (HEIGHT, WIDTH), ["my view.png"])


def test_bad_generation_folders_are_refused_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no such folder"):
        export(tmp_path / "missing", "nerfstudio", out)
    (tmp_path / "empty" / "views").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no views/\*\.png"):
        export(tmp_path / "empty", "colmap", out)
    folder = generation_folder(tmp_path / "generation", varied=False)
    (folder / "views" / "view_004.png").unlink()
    with pytest.raises(ValueError, match="4 PNGs but .*cameras.json has 5 views"):
        export(folder, "instant-ngp", out)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "views" / "view_004.png")
    with pytest.raises(ValueError, match=r"view_004.png: 8x8 px, but .* 32x24 px"):
        export(folder, "nerfstudio", out)
    assert not out.exists()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        export(folder, "nerfstudio", tmp_path / "a-file")
    with pytest.raises(SystemExit) as exit_info:
        export(folder, "blender", out)
    assert exit_info.value.code == 2
