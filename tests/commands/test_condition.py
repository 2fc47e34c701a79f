"""``infer.py condition``: novel views of the object in input images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import viewdiff.commands.generation as generation
import viewdiff.commands.infer as infer
from viewdiff.cameras.cameras_json import read_cameras, write_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit


def picture(path, size=(80, 60), seed=0):
    """A random RGB picture of (W, H)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_one_image_without_cameras_sits_on_the_orbit_at_azimuth_zero(tiny_export, tmp_path):
    image = picture(tmp_path / "in.png")
    out = tmp_path / "o"
    argv = ["condition", "--checkpoint", str(tiny_export), "--images", str(image), "--views", "5"]
    assert infer.main([*argv, "--elevation", "40", "--steps", "2", "--out", str(out)]) == 0
    assert len(list((out / "views").glob("view_*.png"))) == 5
    given = Image.open(out / "inputs" / "input_000.png")
    assert given.size == (64, 64)  # the centre square, at the export's image size
    K, w2c, size_hw = read_cameras(out / "input_cameras.json")
    torch.testing.assert_close(w2c.float(), orbit(1, 40.0, 4.0))
    _, targets, _ = read_cameras(out / "cameras.json")
    torch.testing.assert_close(targets.float(), orbit(5, 40.0, 4.0))
    info = json.loads((out / "generation.json").read_text())
    assert info["command"] == "condition" and info["inputs"] == [str(image)]
    assert info["sample"]["image_guidance_scale"] == 1.0


def test_several_images_come_with_their_cameras_and_errors_come_first(
    tiny_export, tmp_path, capsys, monkeypatch
):
    images = [picture(tmp_path / f"in{i}.png", (96, 96), seed=i) for i in range(2)]
    cameras = tmp_path / "input_cameras.json"
    K = intrinsics_from_fov(50.0, 96, 96).expand(2, 3, 3)
    write_cameras(cameras, K, orbit(2, 30.0, 4.0, start_azimuth_deg=20.0), (96, 96))
    out = tmp_path / "o"
    argv = ["condition", "--checkpoint", str(tiny_export), "--images", *map(str, images)]
    assert infer.main([*argv, "--cameras", str(cameras), "--views", "3", "--steps", "1",
                       "--out", str(out)]) == 0  # fmt: skip
    K_in, _, size_hw = read_cameras(out / "input_cameras.json")
    assert size_hw == (64, 64)  # resized with the images
    torch.testing.assert_close(K_in.float(), intrinsics_from_fov(50.0, 64, 64).expand(2, 3, 3))
    assert len(list((out / "inputs").glob("*.png"))) == 2

    monkeypatch.setattr(generation, "load_export", lambda *a, **k: pytest.fail("model loaded"))
    for extra, message in [
        ([], "2 input images need their cameras: --cameras FILE"),
        (["--cameras", str(tmp_path / "none.json")], "cameras file not found"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            infer.main([*argv, *extra, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    single = ["condition", "--checkpoint", str(tiny_export), "--images", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit):
        infer.main([*single, "--out", str(tmp_path / "bad")])
    assert "input image not found" in capsys.readouterr().err
