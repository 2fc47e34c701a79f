"""The command lines: train.py's config handling and infer.py's commands."""

import json

import pytest
import torch
import yaml
from PIL import Image

import infer
import train
from viewdiff.cameras.cameras_json import read_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.config import config_from_dict, load_config


def test_print_config_prints_the_resolved_config(capsys):
    assert train.main(["--config", "configs/co3d_sd21.yaml", "train.seed=9", "--print-config"]) == 0
    printed = config_from_dict(yaml.safe_load(capsys.readouterr().out))
    assert printed == load_config("configs/co3d_sd21.yaml", ["train.seed=9"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "configs/missing.yaml"], "config file not found: configs/missing.yaml"),
        (["train.batch_sise=2"], "unknown key 'train.batch_sise'; did you mean 'train.batch_size'"),
        (["train.batch_size=two"], "train.batch_size expects int, got 'two'"),
    ],
)
def test_bad_config_exits_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, "--print-config"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_config_keys(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "model.pose_lora_rank (int, default 64)" in capsys.readouterr().out


def test_cameras_command_writes_an_orbit_and_its_picture(tmp_path):
    out = tmp_path / "orbit"
    assert infer.main(["cameras", "--out", str(out), "--views", "6", "--image-size", "64"]) == 0
    K, w2c, size_hw = read_cameras(out / "cameras.json")
    assert size_hw == (64, 64)
    torch.testing.assert_close(w2c.float(), orbit(6, 30.0, 4.0))
    torch.testing.assert_close(K.float(), intrinsics_from_fov(48.0, 64, 64).expand(6, 3, 3))
    picture = Image.open(out / "cameras.png")
    assert picture.size == (3 * 64, 2 * 64)
    # The box is drawn: the picture is not blank.
    assert len(picture.getcolors(maxcolors=1 << 16)) > 2


def test_cameras_command_checks_a_cameras_file(tmp_path, capsys):
    out = tmp_path / "first"
    infer.main(["cameras", "--out", str(out), "--views", "3", "--image-size", "32"])
    assert (
        infer.main(
            ["cameras", "--cameras", str(out / "cameras.json"), "--out", str(tmp_path / "again")]
        )
        == 0
    )
    assert (tmp_path / "again" / "cameras.json").read_text() == (out / "cameras.json").read_text()
    bad = tmp_path / "bad.json"
    identity = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    views = [{"K": identity, "w2c": [[1, 0, 0, 0]]}]
    bad.write_text(json.dumps({"convention": "opencv", "height": 8, "width": 8, "views": views}))
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["cameras", "--cameras", str(bad), "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert "bad.json: view 0: 'w2c' must be 4x4, got shape [1, 4]" in capsys.readouterr().err
