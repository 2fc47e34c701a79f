"""``infer.py sample``: views from text, the files they land in, and errors before any compute."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import viewdiff.commands.generation as generation
import viewdiff.commands.infer as infer
from viewdiff.cameras.cameras_json import read_cameras, write_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.scene.turntable import mp4_available

FAST = ["--steps", "2"]


def test_sample_writes_views_grid_video_and_cameras(tiny_export, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["sample", "--checkpoint", str(tiny_export), "--prompt", "a red can", "--views", "8"]
    assert infer.main([*argv, "--out", str(out), *FAST]) == 0
    views = sorted((out / "views").glob("view_*.png"))
    assert [path.name for path in views] == [f"view_{i:03d}.png" for i in range(8)]
    assert Image.open(views[0]).size == (64, 64)  # the export's data.image_size
    assert Image.open(out / "grid.png").size == (3 * 64, 3 * 64)
    assert Image.open(out / "turntable.gif").n_frames == 8
    assert (out / "turntable.mp4").is_file() == mp4_available()
    K, w2c, size_hw = read_cameras(out / "cameras.json")
    assert size_hw == (64, 64)
    torch.testing.assert_close(w2c.float(), orbit(8, 30.0, 4.0))
    torch.testing.assert_close(K.float(), intrinsics_from_fov(48.0, 64, 64).expand(8, 3, 3))
    info = json.loads((out / "generation.json").read_text())
    assert info["prompt"] == "a red can" and info["seed"] == 0
    assert info["sample"]["scheduler"] == "unipc" and info["sample"]["num_inference_steps"] == 2
    assert "8 views in" in capsys.readouterr().out
    # Same command, same seed: the same PNGs.
    again = tmp_path / "again"
    infer.main([*argv, "--out", str(again), *FAST])
    assert (again / "views" / "view_005.png").read_bytes() == (views[5]).read_bytes()


def test_the_orbit_comes_from_the_export_sample_settings_unless_given(tiny_export, tmp_path):
    # The export's sample.elevation_deg / radius / fov_deg make the default orbit; flags win.
    moved = tmp_path / "export"
    shutil.copytree(tiny_export, moved)
    config = json.loads((moved / "config.json").read_text())
    config["sample"].update(elevation_deg=20.0, radius=5.0, fov_deg=30.0)
    (moved / "config.json").write_text(json.dumps(config))
    argv = ["sample", "--checkpoint", str(moved), "--prompt", "a red can", "--views", "2", *FAST]
    infer.main([*argv, "--out", str(tmp_path / "a")])
    K, w2c, _ = read_cameras(tmp_path / "a" / "cameras.json")
    torch.testing.assert_close(w2c.float(), orbit(2, 20.0, 5.0))
    torch.testing.assert_close(K.float(), intrinsics_from_fov(30.0, 64, 64).expand(2, 3, 3))
    infer.main([*argv, "--fov", "40", "--radius", "3", "--out", str(tmp_path / "b")])
    K, w2c, _ = read_cameras(tmp_path / "b" / "cameras.json")
    torch.testing.assert_close(w2c.float(), orbit(2, 20.0, 3.0))
    torch.testing.assert_close(K.float(), intrinsics_from_fov(40.0, 64, 64).expand(2, 3, 3))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_prompts_file_batches_prompts_each_with_its_own_seed(tiny_export, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red box\na blue ball\n")
    common = ["--checkpoint", str(tiny_export), "--views", "3", *FAST, "--seed", "10"]
    infer.main(["sample", "--prompts", str(prompts), "--batch-size", "2",
                "--out", str(tmp_path / "all"), *common])  # fmt: skip
    folders = sorted(path.name for path in (tmp_path / "all").iterdir())
    assert folders == ["000_a_red_box", "001_a_blue_ball"]
    # The second prompt alone with seed 11 (10 + its index) makes the same views.
    alone = tmp_path / "alone"
    infer.main(["sample", "--prompt", "a blue ball", "--out", str(alone), *common[:-1], "11"])
    for index in range(3):
        batched = pixels(tmp_path / "all" / "001_a_blue_ball" / "views" / f"view_{index:03d}.png")
        assert np.abs(batched - pixels(alone / "views" / f"view_{index:03d}.png")).max() <= 1


def test_a_cameras_file_sets_the_views_and_many_views_go_window_by_window(tiny_export, tmp_path):
    cameras = tmp_path / "cameras.json"
    w2c = orbit(5, 40.0, 4.5, start_azimuth_deg=10.0)
    write_cameras(cameras, intrinsics_from_fov(40.0, 32, 48).expand(5, 3, 3), w2c, (32, 48))
    out = tmp_path / "o"
    argv = ["sample", "--checkpoint", str(tiny_export), "--prompt", "a cup", "--cameras"]
    assert infer.main([*argv, str(cameras), "--window", "2", "--out", str(out), *FAST]) == 0
    assert len(list((out / "views").glob("*.png"))) == 5
    assert Image.open(out / "views" / "view_004.png").size == (48, 32)
    assert (out / "cameras.json").read_text() == cameras.read_text()


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a command gets as far as loading the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(generation, "load_export", refuse)


def run_failing(argv, capsys) -> str:
    """Run infer.py expecting exit status 2; its error output."""
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_checkpoints_schedulers_and_cameras_fail_before_any_compute(
    tiny_export, tiny_sd, tmp_path, capsys, no_compute
):
    base = ["sample", "--prompt", "a can", "--out", str(tmp_path / "o")]
    error = run_failing([*base, "--checkpoint", str(tmp_path / "nowhere")], capsys)
    assert "checkpoint not found:" in error and "nowhere" in error
    error = run_failing([*base, "--checkpoint", str(tiny_sd)], capsys)
    assert "is not an inference export (<output_dir>/model/): missing multiview.json" in error
    error = run_failing([*base, "--checkpoint", str(tiny_export.parent)], capsys)
    assert f"this looks like a run folder: use {tiny_export}" in error
    error = run_failing([*base, "--checkpoint", str(tiny_export), "--scheduler", "plms"], capsys)
    assert "invalid choice: 'plms' (choose from" in error  # argparse quotes them or not
    assert all(name in error.split("choose from")[1] for name in ("unipc", "ddim", "euler"))
    bad = tmp_path / "bad.json"
    K = intrinsics_from_fov(48.0, 64, 64).tolist()
    bad.write_text(json.dumps({"convention": "opencv", "height": 64, "width": 64,
                               "views": [{"K": K, "w2c": [[1, 0, 0, 0]] * 3}]}))  # fmt: skip
    error = run_failing([*base, "--checkpoint", str(tiny_export), "--cameras", str(bad)], capsys)
    assert "bad.json: view 0: 'w2c' must be 4x4, got shape [3, 4]" in error
    error = run_failing([*base, "--checkpoint", str(tiny_export), "--steps", "0"], capsys)
    assert "argument --steps: must be at least 1, got 0" in error
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sample_runs_on_cuda_in_half_precision(tiny_export, tmp_path):
    out = tmp_path / "gpu"
    argv = ["sample", "--checkpoint", str(tiny_export), "--prompt", "a red can", "--views", "4"]
    assert infer.main([*argv, "--device", "cuda", "--dtype", "fp16", "--out", str(out)]) == 0
    views = [pixels(path) for path in sorted((out / "views").glob("*.png"))]
    assert len(views) == 4 and all(view.std() > 0 for view in views)
