"""Trajectories, given input views, the sliding-window plan and the files a generation writes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.cameras_json import read_cameras, write_cameras
from viewdiff.cameras.conventions import camera_centers, project
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.inference.inputs import load_given_views, load_single_view
from viewdiff.inference.outputs import object_folder_name, read_prompts, save_generation
from viewdiff.inference.trajectory import (
    Trajectory,
    default_input_camera,
    orbit_trajectory,
    read_trajectory,
)
from viewdiff.inference.windows import plan_windows


def test_orbit_trajectory_matches_the_cameras_command_and_its_pose_features():
    trajectory = orbit_trajectory(6, 30.0, 4.0, 64)
    torch.testing.assert_close(trajectory.w2c, orbit(6, 30.0, 4.0))
    torch.testing.assert_close(trajectory.K, intrinsics_from_fov(48.0, 64, 64).expand(6, 3, 3))
    pose = trajectory.pose_features()
    assert pose.shape == (6, 10)
    torch.testing.assert_close(pose[:, 0], torch.full((6,), torch.pi / 3))  # polar angle 60 deg
    torch.testing.assert_close(pose[:, 3], torch.full((6,), 4.0))  # radius
    torch.testing.assert_close(trajectory.azimuths_deg(), torch.arange(6) * 60.0)
    with pytest.raises(ValueError, match="inside the object box"):
        orbit_trajectory(4, 30.0, 0.5, 64)


def test_cameras_files_of_the_wrong_shape_or_frame_are_refused(tmp_path):
    path = tmp_path / "cameras.json"
    write_cameras(
        path, intrinsics_from_fov(48.0, 60, 60).expand(2, 3, 3), orbit(2, 30, 4), (60, 60)
    )
    with pytest.raises(ValueError, match="multiples of 8"):
        read_trajectory(path)
    flipped = orbit(3, 30, 4)
    flipped[1, [0, 2]] = -flipped[1, [0, 2]]  # half a turn about its y axis: looks away
    write_cameras(path, intrinsics_from_fov(48.0, 64, 64).expand(3, 3, 3), flipped, (64, 64))
    with pytest.raises(ValueError, match="view 1 does not look at the object box"):
        read_trajectory(path)
    document = json.loads(path.read_text())
    document["views"][0]["w2c"] = document["views"][0]["w2c"][:3]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="view 0: 'w2c' must be 4x4"):
        read_trajectory(path)


def test_windows_cover_every_camera_once_spread_first_then_along_the_trajectory():
    windows = plan_windows(orbit(24, 30.0, 4.0), None, window_views=5, max_conditions=3)
    targets = [t for window in windows for t in window.targets]
    assert sorted(targets) == list(range(24))
    assert windows[0].targets == (0, 4, 9, 14, 19) and windows[0].conditions == ()
    made = set()
    for window in windows:
        assert len(window.targets) <= 5 and len(window.conditions) <= 3
        assert set(window.conditions) <= made  # only views generated before
        made |= set(window.targets)
    # Conditions are the generated views nearest to the window (15 degrees apart): views 1-6
    # see 0 and 4 beside them and 9, 45 degrees from 6, not 14 or 19 (90 degrees or more).
    assert windows[1] == type(windows[1])((1, 2, 3, 5, 6), (0, 4, 9))
    assert windows[-1].conditions == (0, 18, 19)


def test_windows_always_see_the_given_views_and_a_single_window_fits_all():
    given = orbit(1, 30.0, 4.0, start_azimuth_deg=180.0)
    windows = plan_windows(orbit(12, 30.0, 4.0), given, window_views=4, max_conditions=3)
    assert all(window.conditions[0] == 0 for window in windows)  # pool number 0: the input
    assert sorted(t for w in windows for t in w.targets) == list(range(1, 13))
    single = plan_windows(orbit(5, 30.0, 4.0), given, window_views=8, max_conditions=3)
    assert single == [type(single[0])(targets=(1, 2, 3, 4, 5), conditions=(0,))]
    with pytest.raises(ValueError, match="window_views"):
        plan_windows(orbit(3, 30, 4), None, window_views=0)


def test_given_views_resize_with_their_intrinsics(tmp_path):
    # A white image with one red pixel where the camera sees the box centre.
    K = intrinsics_from_fov(48.0, 48, 96)
    w2c = orbit(1, 30.0, 4.0)
    (u, v), _ = project(torch.zeros(1, 3), K, w2c[0])[0][0], None
    picture = np.full((48, 96, 3), 255, np.uint8)
    picture[round(v.item()), round(u.item())] = (255, 0, 0)
    Image.fromarray(picture).save(tmp_path / "in.png")
    cameras = Trajectory(K[None], w2c, (48, 96))
    images, resized = load_given_views([tmp_path / "in.png"], cameras, (32, 64))
    assert images.shape == (1, 3, 32, 64) and resized.image_size_hw == (32, 64)
    (u2, v2), _ = project(torch.zeros(1, 3), resized.K[0], w2c[0])[0][0], None
    redness = images[0, 0] - images[0, 1]
    row, column = divmod(int(redness.argmax()), 64)
    assert abs(column - u2.item()) <= 1 and abs(row - v2.item()) <= 1
    with pytest.raises(ValueError, match="cannot be resized to 64x64"):
        load_given_views([tmp_path / "in.png"], cameras, (64, 64))
    with pytest.raises(ValueError, match="in.png: 96x48 px, but its cameras are for 64x64"):
        load_given_views([tmp_path / "in.png"], Trajectory(K[None], w2c, (64, 64)), (64, 64))
    with pytest.raises(ValueError, match="input image not found"):
        load_single_view(tmp_path / "missing.png", default_input_camera(30.0, 4.0, 64))


def test_a_single_view_is_the_centre_square_at_the_default_camera(tmp_path):
    rgba = np.zeros((40, 80, 4), np.uint8)  # transparent: white after compositing
    rgba[:, 20:60, 3] = 255  # the opaque centre square is black
    Image.fromarray(rgba).save(tmp_path / "in.png")
    image, camera = load_single_view(tmp_path / "in.png", default_input_camera(30.0, 4.0, 16))
    assert image.shape == (1, 3, 16, 16) and image.abs().max() <= 1
    assert image[0, :, 6:10, 6:10].max() < -0.9  # black centre, white border cropped away
    centre = camera_centers(camera.w2c)[0]
    assert centre[1].abs() < 1e-5 and centre[0] > 0  # azimuth 0


def test_a_generation_writes_views_grid_video_cameras_and_its_settings(tmp_path):
    trajectory = orbit_trajectory(4, 30.0, 4.0, 16)
    views = torch.linspace(-1, 1, 4).reshape(4, 1, 1, 1).expand(4, 3, 16, 16)
    given = default_input_camera(30.0, 4.0, 16)
    written = save_generation(
        tmp_path, views, trajectory, {"prompt": "a box"}, views[:1], given, fps=5.0
    )
    names = {path.relative_to(tmp_path).as_posix() for path in written}
    assert {"views/view_000.png", "views/view_003.png", "grid.png", "turntable.gif"} <= names
    assert {"cameras.json", "inputs/input_000.png", "input_cameras.json"} <= names
    assert Image.open(tmp_path / "grid.png").size == (32, 32)
    assert Image.open(tmp_path / "turntable.gif").n_frames == 4
    K, w2c, size = read_cameras(tmp_path / "cameras.json")
    torch.testing.assert_close(w2c.float(), trajectory.w2c)
    assert size == (16, 16)
    assert json.loads((tmp_path / "generation.json").read_text()) == {"prompt": "a box"}
    assert object_folder_name(3, "A red can!") == "003_a_red_can"
    (tmp_path / "prompts.txt").write_text("# objects\na red can\n\n a ball \n")
    assert read_prompts(tmp_path / "prompts.txt") == ["a red can", "a ball"]


def test_infer_exits_2_on_its_input_errors_and_shows_a_bugs_traceback(monkeypatch, capsys):
    import viewdiff.commands.infer as infer

    failures = {
        "missing": FileNotFoundError("cameras file not found: nope.json"),
        "not a folder": NotADirectoryError("--out x: not a folder"),
        "bug": RuntimeError("a bug"),
    }
    parse_args = infer.argparse.ArgumentParser.parse_args
    for name, failure in failures.items():

        def parse(self, *args, failure=failure, **kwargs):
            namespace = parse_args(self, *args, **kwargs)
            namespace.run = lambda _: (_ for _ in ()).throw(failure)  # the command fails so
            return namespace

        monkeypatch.setattr(infer.argparse.ArgumentParser, "parse_args", parse)
        if name == "bug":  # not an input error: its traceback shows
            with pytest.raises(RuntimeError, match="a bug"):
                infer.main(["cameras", "--out", "x"])
            continue
        with pytest.raises(SystemExit) as exit_info:
            infer.main(["cameras", "--out", "x"])
        assert exit_info.value.code == 2 and str(failure) in capsys.readouterr().err
