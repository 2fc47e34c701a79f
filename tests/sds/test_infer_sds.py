"""infer.py sds: a short run end to end on the tiny export, and bad input exits 2 first."""

import json

import numpy as np
import pytest
from PIL import Image

import infer
from viewdiff.scene.gaussians import read_gaussian_ply

SHORT = ["--steps", "4", "--gaussians", "200", "--size", "32", "--views", "2",
         "sds.eval_every=2", "sds.checkpoint_every=2", "sds.turntable_views=4"]  # fmt: skip


def _sds(tiny_export, out, *extra):
    argv = ["sds", "--checkpoint", str(tiny_export), "--prompt", "a red ball", "--out", str(out)]
    return infer.main([*argv, *SHORT, *extra])


def test_a_short_run_writes_every_output_and_resumes(tiny_export, tmp_path):
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="camera_distribution.json"):
        assert _sds(tiny_export, out) == 0
    for name in ("scene.ply", "turntable.gif", "cameras.json", "sds.json", "checkpoint/scene.ply",
                 "progress/step-000001.png", "progress/step-000004.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list((out / "logs").glob("events.out.tfevents.*"))
    document = json.loads((out / "sds.json").read_text())
    assert document["steps"] == 4 and document["sds"]["num_gaussians"] == 200
    assert document["seconds_per_step"] > 0 and document["cameras"]["radius"] == [4.0, 4.0]
    scene = read_gaussian_ply(out / "scene.ply")
    assert scene.num_gaussians == document["gaussians"]
    more = tmp_path / "more"
    with pytest.warns(UserWarning):
        code = _sds(tiny_export, more, "--resume", str(out / "checkpoint"), "--steps", "6")
    assert code == 0 and json.loads((more / "sds.json").read_text())["steps"] == 6


def test_image_to_3d_and_an_init_scene(tiny_export, tmp_path):
    Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(tmp_path / "view.png")
    out = tmp_path / "image"
    with pytest.warns(UserWarning):
        code = _sds(tiny_export, out, "--image", str(tmp_path / "view.png"), "--steps", "2")
    assert code == 0 and json.loads((out / "sds.json").read_text())["image"].endswith("view.png")
    with pytest.warns(UserWarning):
        assert _sds(tiny_export, tmp_path / "init", "--init", str(out / "scene.ply")) == 0
    with pytest.warns(UserWarning):
        assert _sds(tiny_export, tmp_path / "sample", "--init-from-sample", "--steps", "1") == 0
    assert json.loads((tmp_path / "sample" / "sds.json").read_text())["init"] == "sample"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--prompt": " "}, "--prompt is empty"),
        ({"--checkpoint": "missing"}, "checkpoint not found"),
        ({"--init": "{tmp}/broken.ply"}, "broken.ply"),
        ({"--init": "{tmp}/nothing.ply"}, "no such file"),
        ({"--image": "{tmp}/wide.png"}, "must be square"),
        ({"--image": "{tmp}/missing.png"}, "input image not found"),
        ({"--camera": "{tmp}/cameras.json"}, "give --image too"),
        ({"--resume": "{tmp}"}, "is not an SDS checkpoint"),
        ({"--out": "{tmp}/file.txt"}, "is a file"),
        ({"--steps": "0"}, "argument --steps: must be at least 1, got 0"),
        ({"--size": "30"}, "multiple of 8"),
        ({"--views": "1"}, ">= 2"),
        ({"extra": "model.voxel_grid_size=4"}, "sds.* overrides only"),
        ({"extra": "sds.nonsense=1"}, "nonsense"),
    ],
)
def test_bad_input_exits_2_before_compute(
    tiny_export, tmp_path, capsys, monkeypatch, change, message
):
    (tmp_path / "broken.ply").write_text("not a ply")
    (tmp_path / "file.txt").write_text("")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "wide.png")
    (tmp_path / "cameras.json").write_text("{}")
    monkeypatch.setattr("viewdiff.commands.sds.load_export", _no_compute)
    args = {
        "--checkpoint": str(tiny_export),
        "--prompt": "a red ball",
        "--out": str(tmp_path / "o"),
    }
    extra = [change.pop("extra")] if "extra" in change else []
    args |= {key: value.format(tmp=tmp_path) for key, value in change.items()}
    argv = ["sds", *[x for pair in args.items() for x in pair], *extra]
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _no_compute(*args, **kwargs):
    raise AssertionError("the prior was loaded before the input was checked")
