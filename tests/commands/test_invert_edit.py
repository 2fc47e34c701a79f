"""infer.py invert / edit on the tiny models: outputs, round trip, and input errors (exit 2)."""

import json

import numpy as np
import pytest
from PIL import Image

import infer
from viewdiff.cameras.cameras_json import write_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit


@pytest.fixture
def views(tmp_path):
    """Two 64 px views with their cameras."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"view{index}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    K, w2c = intrinsics_from_fov(40, 64, 64).expand(2, 3, 3), orbit(2, 30, 4.0)
    write_cameras(tmp_path / "cameras.json", K, w2c, (64, 64))
    return paths, tmp_path / "cameras.json"


def test_invert_then_edit_multiview(tiny_export, views, tmp_path, capsys):
    paths, cameras = views
    out = tmp_path / "inv"
    argv = [
        "invert",
        "--checkpoint",
        str(tiny_export),
        "--images",
        *map(str, paths),
        "--cameras",
        str(cameras),
        "--prompt",
        "a red ball",
        "--out",
        str(out),
        "--steps",
        "8",
    ]
    assert infer.main(argv) == 0
    for name in (
        "inversion.safetensors",
        "inversion.json",
        "cameras.json",
        "grid.png",
        "reconstruction.json",
        "inputs/view_001.png",
        "reconstruction/view_001.png",
    ):
        assert (out / name).is_file(), name
    scores = json.loads((out / "reconstruction.json").read_text())
    assert scores["max_latent_error"] <= 1e-4
    # The reconstruction is the VAE round trip of the input, to 8-bit precision.
    assert min(scores["psnr_vs_vae_roundtrip"]) > 50
    edited = tmp_path / "edit"
    argv = [
        "edit",
        "--inversion",
        str(out),
        "--prompt",
        "a blue box",
        "--skip",
        "2",
        "--cfg-tar",
        "7.5",
        "--out",
        str(edited),
    ]
    assert infer.main(argv) == 0
    for name in ("views/view_000.png", "grid.png", "before_after.png", "cameras.json", "edit.json"):
        assert (edited / name).is_file(), name
    assert Image.open(edited / "before_after.png").size == (2 * 64, 2 * 64)
    assert "edited to 'a blue box'" in capsys.readouterr().out


def test_invert_a_plain_sd_folder(tiny_sd, views, tmp_path):
    paths, _ = views
    out = tmp_path / "sd"
    argv = [
        "invert",
        "--checkpoint",
        str(tiny_sd),
        "--images",
        *map(str, paths),
        "--out",
        str(out),
        "--steps",
        "6",
        "--prompt",
        "a ball",
    ]
    assert infer.main(argv) == 0
    assert json.loads((out / "inversion.json").read_text())["kind"] == "sd"
    argv = [
        "edit",
        "--inversion",
        str(out),
        "--prompt",
        "a box",
        "--skip",
        "1",
        "--out",
        str(tmp_path / "sd-edit"),
    ]
    assert infer.main(argv) == 0


def _fail(argv, capsys, message):
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_inputs_exit_2_naming_the_file(tiny_export, views, tmp_path, capsys):
    paths, cameras = views
    base = ["invert", "--checkpoint", str(tiny_export), "--out", str(tmp_path / "o")]
    _fail(
        [*base, "--images", str(paths[0]), "--cameras", str(cameras)],
        capsys,
        "1 input images but 2 input cameras",
    )
    _fail([*base, "--images", *map(str, paths)], capsys, "need their cameras")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "small.png")
    _fail(
        [*base, "--images", str(tmp_path / "small.png"), str(paths[1]), "--cameras", str(cameras)],
        capsys,
        "small.png: 64x48 px",
    )
    _fail([*base, "--images", str(tmp_path / "nothing.png")], capsys, "nothing.png")
    # Corrupt inversion folders.
    broken = tmp_path / "broken"
    broken.mkdir()
    edit = ["edit", "--inversion", str(broken), "--prompt", "x", "--out", str(tmp_path / "e")]
    _fail(edit, capsys, "inversion.json: cannot read")
    (broken / "inversion.json").write_text(json.dumps({"format": "viewdiff.inversion/1"}))
    _fail(edit, capsys, "inversion.safetensors: cannot read")
    (broken / "inversion.safetensors").write_bytes(b"not safetensors")
    _fail(edit, capsys, "inversion.safetensors: cannot read")
    (broken / "inversion.json").write_text("{}")
    _fail(edit, capsys, "not a viewdiff.inversion/1 file")
