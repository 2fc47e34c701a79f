"""Turntables and ``infer.py render``: frames, GIF, MP4 and the cameras they were made with."""

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

import infer
from viewdiff.cameras.cameras_json import read_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.ply import write_ply
from viewdiff.scene.gaussians import random_scene, read_gaussian_ply, write_gaussian_ply
from viewdiff.scene.render import render
from viewdiff.scene.turntable import mp4_available, render_turntable, write_mp4


@pytest.fixture
def scene_file(tmp_path):
    """A small random object in a 3DGS PLY."""
    path = tmp_path / "scene.ply"
    write_gaussian_ply(
        path, random_scene(200, sh_degree=1, generator=torch.Generator().manual_seed(0))
    )
    return path


def test_render_command_writes_frames_gif_mp4_and_cameras(tmp_path, scene_file, capsys):
    out = tmp_path / "turntable"
    argv = ["render", "--scene", str(scene_file), "--out", str(out), "--views", "6", "--size", "32"]
    assert infer.main([*argv, "--elevation", "20", "--radius", "3.5", "--backend", "torch"]) == 0
    assert "200 Gaussians, 6 views" in capsys.readouterr().out
    K, w2c, size_hw = read_cameras(out / "cameras.json")
    assert size_hw == (32, 32)
    torch.testing.assert_close(w2c.float(), orbit(6, 20.0, 3.5))
    torch.testing.assert_close(K.float(), intrinsics_from_fov(48.0, 32, 32).expand(6, 3, 3))
    frames = [np.asarray(Image.open(out / "frames" / f"frame_{i:03d}.png")) for i in range(6)]
    assert all(frame.shape == (32, 32, 3) for frame in frames)
    # The object is in the middle of a white background, and it turns.
    assert all((frame[0, 0] == 255).all() and (frame[16, 16] < 250).any() for frame in frames)
    assert np.abs(frames[0].astype(int) - frames[3]).mean() > 1.0
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 6 and gif.size == (32, 32) and gif.info["loop"] == 0
    assert mp4_available()  # imageio-ffmpeg is a dependency
    reader = imageio_ffmpeg.read_frames(str(out / "turntable.mp4"))
    meta = next(reader)
    assert meta["size"] == (32, 32) and sum(1 for _ in reader) == 6


def test_render_command_fails_clearly_on_a_missing_or_foreign_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["render", "--scene", str(tmp_path / "none.ply"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "scene file not found" in capsys.readouterr().err
    cloud = tmp_path / "pointcloud.ply"
    write_ply(cloud, {c: np.zeros(3, dtype=np.float32) for c in "xyz"})
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["render", "--scene", str(cloud), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "pointcloud.ply: not a 3D Gaussian splatting PLY, missing properties" in (
        capsys.readouterr().err
    )


def test_turntable_frames_match_single_renders(scene_file):
    scene = read_gaussian_ply(scene_file)
    turntable = render_turntable(scene, num_views=4, size=24, background=(0, 0, 0), progress=False)
    assert turntable.frames.shape == (4, 24, 24, 3) and turntable.frames.dtype == np.uint8
    rgb = render(scene, turntable.K[1], turntable.w2c[1], 24, 24).rgb.clamp(0, 1)
    expected = (rgb * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(turntable.frames[1], expected)


def test_mp4_of_odd_sized_frames_still_encodes(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(3, 17, 22, 3), dtype=np.uint8)
    write_mp4(tmp_path / "odd.mp4", frames)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "odd.mp4"))
    # yuv420p needs even sides: the odd height is stretched by one row.
    assert next(reader)["size"] == (22, 18) and sum(1 for _ in reader) == 3
