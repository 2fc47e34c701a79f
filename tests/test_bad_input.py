"""Bad input, command by command: each case exits with its code and a message that names it
(one table per entry point; what each check does is tested next to it)."""

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.cameras_json import cameras_to_json
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.scene.gaussians import random_scene, write_gaussian_ply

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs: {name: path}."""
    root = tmp_path_factory.mktemp("bad-input")
    paths = {"dir": root, "file": root / "a-file.txt", "missing": root / "missing"}
    paths["file"].write_text("not a folder")
    scene = random_scene(20, sh_degree=0, generator=torch.Generator().manual_seed(0))
    write_gaussian_ply(root / "scene.ply", scene)
    paths["scene"] = root / "scene.ply"
    bad = scene.means.clone()
    bad[3, 1] = math.nan
    write_gaussian_ply(root / "nan.ply", type(scene)(bad, *list(scene.tensors().values())[1:]))
    paths["nan_scene"] = root / "nan.ply"
    K, w2c = intrinsics_from_fov(40.0, 64, 64)[None].clone(), orbit(1, 30.0, 4.0)
    K[0, 0, 0] = 0.0
    (root / "zero-focal.json").write_text(json.dumps(cameras_to_json(K, w2c, (64, 64))))
    paths["zero_focal"] = root / "zero-focal.json"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "view.png")
    paths["image"] = root / "view.png"
    return paths


INFER_CASES = {
    "sample: no export": (
        ["sample", "--checkpoint", "{missing}", "--prompt", "a", "--out", "{dir}/o1"], "missing"
    ),
    "sample: --out is a file": (
        ["sample", "--checkpoint", "{export}", "--prompt", "a", "--out", "{file}"], "is a file"
    ),
    "sample: --views 0": (
        ["sample", "--checkpoint", "{export}", "--prompt", "a", "--out", "{dir}/o2", "--views",
         "0"], "argument --views: must be at least 1"),
    "sample: zero focal length": (
        ["sample", "--checkpoint", "{export}", "--prompt", "a", "--out", "{dir}/o3", "--cameras",
         "{zero_focal}"], "zero-focal.json: view 0: focal lengths must be positive"),
    "sample: guidance nan": (
        ["sample", "--checkpoint", "{export}", "--prompt", "a", "--out", "{dir}/o4",
         "--guidance", "nan"], "argument --guidance: must be a finite number, got nan"),
    "sample: --views past its bound": (
        ["sample", "--checkpoint", "{export}", "--prompt", "a", "--out", "{dir}/o4", "--views",
         "1001"], "argument --views: must be at most 1000"),
    "sample: cuda without cuda": (
        ["sample", "--checkpoint", "{export}", "--prompt", "a", "--out", "{dir}/o5", "--device",
         "cuda"], "CUDA is not available"),
    "render: missing scene": (
        ["render", "--scene", "{missing}.ply", "--out", "{dir}/o6"], "missing"),
    "render: NaN in the scene": (
        ["render", "--scene", "{nan_scene}", "--out", "{dir}/o7"], "property 'y' is NaN or inf"
    ),
    "cameras: missing file": (
        ["cameras", "--cameras", "{missing}.json", "--out", "{dir}/o8"], "missing.json"
    ),
    "condition: missing image": (
        ["condition", "--checkpoint", "{export}", "--images", "{missing}.png", "--out",
         "{dir}/o9"], "missing.png"),
    "eval: no shards": (
        ["eval", "--checkpoint", "{export}", "--shards", "{missing}", "--out", "{dir}/o10"],
        "missing"),
    "sds: steps 0": (
        ["sds", "--checkpoint", "{export}", "--prompt", "a", "--out", "{dir}/o11", "--steps", "0"],
        "argument --steps: must be at least 1"),
    "invert: wrong image count": (
        ["invert", "--checkpoint", "{export}", "--images", "{image}", "{image}", "--prompt", "a",
         "--out", "{dir}/o12"], "need their cameras"),
    "edit: not an inversion": (
        ["edit", "--inversion", "{file}", "--prompt", "b", "--out", "{dir}/o13"], "not a folder"
    ),
    "edit-scene: scene out of view": (
        ["edit-scene", "--checkpoint", "{export}", "--scene", "{scene}", "--source-prompt", "a",
         "--prompt", "b", "--out", "{dir}/o14", "--region", "9", "9", "9", "10", "10", "10"],
        "no Gaussian"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(INFER_CASES))
def test_infer(case, files, tiny_export, capsys):
    from infer import main

    argv, message = INFER_CASES[case]
    names = {**{k: str(v) for k, v in files.items()}, "export": str(tiny_export)}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**names) for a in argv])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2, error
    lines = [line for line in error.splitlines() if "error:" in line]
    assert len(lines) == 1 and message.format(**names) in lines[0], error


PREPARE_CASES = {
    "no root": (["--co3d-root", "{missing}"], "CO3D root not found"),
    "empty root": (["--co3d-root", "{dir}"], "no category folder"),
    "bad size": (["--co3d-root", "{dir}", "--size", "60"], "multiple of 8"),
}


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_co3d(case, files, capsys):
    argv, message = PREPARE_CASES[case]
    names = {k: str(v) for k, v in files.items()}
    prepare = runpy.run_path(str(REPO / "data/prepare_co3d.py"))
    with pytest.raises(SystemExit) as exit_info:
        prepare["main"]([*[a.format(**names) for a in argv], "--out", f"{files['dir']}/shards"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error, error


SCRIPT_CASES = {
    "make_synthetic: --out is a file": (
        "data/make_synthetic.py", ["--out", "{file}"], "is a file, not a folder"),
    "make_synthetic: one frame": (
        "data/make_synthetic.py", ["--out", "{dir}/s", "--frames", "1"],
        "argument --frames: must be at least 2"),
    "make_synthetic: size 0x0": (
        "data/make_synthetic.py", ["--out", "{dir}/s", "--size", "0x0"], "in [8, 4096]"),
    "make_synthetic: --sequences 0": (
        "data/make_synthetic.py", ["--out", "{dir}/s", "--sequences", "0"],
        "argument --sequences: must be at least 1"),
    "preview_batch: no manifest": (
        "data/preview_batch.py", ["--shards", "{dir}", "--out", "{dir}/p.png"],
        "no shard manifest"),
    "preview_batch: --out is a folder": (
        "data/preview_batch.py", ["--shards", "{dir}", "--out", "{dir}"], "is a folder"),
    "preview_batch: --n-views 0": (
        "data/preview_batch.py", ["--shards", "{dir}", "--out", "{dir}/p.png", "--n-views", "0"],
        "argument --n-views: must be at least 1"),
    "bench: --steps 0": (
        "bench/sds_step.py", ["--steps", "0"], "argument --steps: must be at least 1"),
    "bench: --json in a missing folder": (
        "bench/model_step.py", ["--json", "{missing}/figures.json"],
        "argument --json: the folder of"),
    "bench: --json is a folder": (
        "bench/render.py", ["--json", "{dir}"], "argument --json: "),
    "gpu_suite: --out is a file": (
        "bench/gpu_suite.py", ["--smoke", "--out", "{file}"], "is a file, not a folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SCRIPT_CASES))
def test_scripts(case, files, capsys):
    script, argv, message = SCRIPT_CASES[case]
    names = {k: str(v) for k, v in files.items()}
    main = runpy.run_path(str(REPO / script))["main"]
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**names) for a in argv])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error, error


TOY = "viewdiff.commands.toy"  # python -m viewdiff.toy
MODULE_CASES = {
    "toy pretrain: no manifest": (
        TOY, ["pretrain", "--shards", "{dir}", "--heldout", "{dir}", "--out", "{dir}/t"],
        "no manifest.json"),
    "toy pretrain: --unet-steps 0": (
        TOY, ["pretrain", "--shards", "{dir}", "--heldout", "{dir}", "--out", "{dir}/t",
                         "--unet-steps", "0"], "argument --unet-steps: must be at least 1"),
    "toy ship: no base": (
        TOY, ["ship", "--base", "{missing}", "--export", "{dir}", "--out", "{dir}/s"],
        "no model_index.json"),
    "toy picture: 17 views": (
        TOY, ["picture", "--out", "{dir}/p.png", "--views", "17"],
        "argument --views: must be at most 16"),
    "tiny: out_dir is a file": ("viewdiff.commands.tiny", ["{file}"], "out_dir"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_modules(case, files, capsys):
    import importlib

    module, argv, message = MODULE_CASES[case]
    names = {k: str(v) for k, v in files.items()}
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**names) for a in argv])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error, error
