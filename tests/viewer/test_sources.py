"""What a PATH of ``infer.py view`` is: every kind read from small folders written here with the
commands' own writers, the covariances checked by hand, and every bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.cameras_json import write_cameras
from viewdiff.inference.outputs import write_views
from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.scene.checkpoint import write_checkpoint
from viewdiff.scene.gaussians import GaussianScene, random_scene, write_gaussian_ply
from viewdiff.scene.sh import rgb_to_sh0
from viewdiff.scene.turntable import Turntable, save_turntable, turntable_cameras
from viewdiff.viewer.sources import (
    ViewerInputError,
    classify,
    load_source,
    load_sources,
    read_splats,
)

SIZE = 16  # pixels of every picture here


def write_scene(path: Path, count: int = 20, seed: int = 0) -> GaussianScene:
    """A random 3DGS PLY (SH degree 1, as other tools write them)."""
    scene = random_scene(count, sh_degree=1, generator=torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gaussian_ply(path, scene)
    return scene


def write_turntable(folder: Path, views: int = 4) -> None:
    """frames/*.png + cameras.json, as render, fit and sds write them."""
    K, w2c = turntable_cameras(views, 30.0, 4.0, SIZE, 48.0)
    frames = np.full((views, SIZE, SIZE, 3), 200, np.uint8)
    save_turntable(folder, Turntable(frames, K, w2c), mp4=False)


def write_generation(folder: Path, views: int = 3, images_dir: str = "views") -> None:
    """views/view_XXX.png + cameras.json + generation.json, as sample writes them."""
    orbit = orbit_trajectory(views, 30.0, 4.0, SIZE)
    write_views(folder / images_dir, torch.zeros(views, 3, SIZE, SIZE), images_dir[:-1])
    write_cameras(folder / "cameras.json", orbit.K, orbit.w2c, orbit.image_size_hw)
    (folder / "generation.json").write_text(json.dumps({"prompt": "a red ball"}))


def write_progress(folder: Path, steps: list[int], digits: int) -> None:
    """progress/step-N.png pictures."""
    (folder / "progress").mkdir(parents=True)
    for step in steps:
        picture = Image.new("RGB", (2 * SIZE, SIZE), (step, 0, 0))
        picture.save(folder / "progress" / f"step-{step:0{digits}d}.png")


def write_sds_run(folder: Path) -> None:
    """What infer.py sds leaves: scene.ply, the turntable, sds.json, progress, checkpoint."""
    scene = write_scene(folder / "scene.ply", 30)
    write_turntable(folder, 4)
    (folder / "sds.json").write_text(json.dumps({"prompt": "a red ball", "steps": 12}))
    write_progress(folder, [1, 4, 12], digits=6)
    write_checkpoint(folder / "checkpoint", "viewdiff.sds_state/1", scene, {}, {"step": 12})


def write_edit_run(folder: Path, original: str) -> None:
    """What infer.py edit-scene leaves: scene.ply, edit.json naming the original, progress,
    before | after frames (no cameras.json)."""
    write_scene(folder / "scene.ply", 25, seed=1)
    document = {"scene": original, "source_prompt": "a red ball", "prompt": "a blue ball"}
    (folder / "edit.json").write_text(json.dumps(document))
    write_progress(folder, [10, 11], digits=2)
    (folder / "frames").mkdir()
    Image.new("RGB", (2 * SIZE, SIZE)).save(folder / "frames" / "frame_000.png")


def test_a_ply_file_is_a_scene_with_the_turntable_beside_it(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "render" / "scene.ply", 20)
    write_turntable(tmp_path / "render", 4)
    source = load_source(tmp_path / "render" / "scene.ply")
    assert source.kind == "scene" and source.splats is not None and len(source.splats) == 20
    splats = source.splats
    assert splats.centers.shape == (20, 3) and splats.covariances.shape == (20, 3, 3)
    assert splats.rgbs.shape == (20, 3) and splats.opacities.shape == (20, 1)
    assert splats.rgbs.min() >= 0 and splats.rgbs.max() <= 1
    assert splats.opacities.min() > 0 and splats.opacities.max() < 1
    np.testing.assert_allclose(splats.centers, scene.means.numpy(), atol=1e-6)
    assert len(source.views) == 4 and all(view.image_path for view in source.views)
    assert source.views[0].pixels().shape == (SIZE, SIZE, 3)
    # Without frames beside, the cameras come alone; without cameras.json, none.
    write_scene(tmp_path / "alone" / "scene.ply")
    assert load_source(tmp_path / "alone" / "scene.ply").views == ()
    write_turntable(tmp_path / "alone", 3)
    for frame in (tmp_path / "alone" / "frames").iterdir():
        frame.unlink()
    views = load_source(tmp_path / "alone" / "scene.ply").views
    assert len(views) == 3 and views[0].pixels() is None


def test_covariance_colour_and_opacity_by_hand(tmp_path: Path) -> None:
    """90 degrees about z swaps the x and y axes: scales (1, 2, 3) give diag(4, 1, 9)."""
    half = math.pi / 4
    scene = GaussianScene(
        means=torch.tensor([[0.1, 0.2, 0.3]]),
        log_scales=torch.log(torch.tensor([[1.0, 2.0, 3.0]])),
        quats=torch.tensor([[math.cos(half), 0.0, 0.0, math.sin(half)]]),
        opacity_logits=torch.zeros(1),
        f_dc=rgb_to_sh0(torch.tensor([[0.2, 0.4, 0.6]])),
        f_rest=torch.zeros(1, 0, 3),
    )
    write_gaussian_ply(tmp_path / "one.ply", scene)
    splats = read_splats(tmp_path / "one.ply")
    np.testing.assert_allclose(splats.covariances[0], np.diag([4.0, 1.0, 9.0]), atol=1e-5)
    np.testing.assert_allclose(splats.rgbs[0], [0.2, 0.4, 0.6], atol=1e-6)
    np.testing.assert_allclose(splats.opacities[0], [0.5])


def test_a_generation_folder_is_its_views_with_their_cameras(tmp_path: Path) -> None:
    write_generation(tmp_path / "gen", 3)
    source = load_source(tmp_path / "gen")
    assert source.kind == "generation" and source.splats is None
    assert [view.name for view in source.views] == ["view_000", "view_001", "view_002"]
    orbit = orbit_trajectory(3, 30.0, 4.0, SIZE)
    np.testing.assert_allclose(source.views[1].w2c, orbit.w2c[1].numpy(), atol=1e-6)
    np.testing.assert_allclose(source.views[1].K, orbit.K[1].numpy(), atol=1e-6)
    assert source.views[2].pixels().shape == (SIZE, SIZE, 3)
    assert source.info["prompt"] == "a red ball"
    # infer.py invert: the views it inverted, in inputs/.
    write_generation(tmp_path / "inv", 2, images_dir="inputs")
    assert [view.name for view in load_source(tmp_path / "inv").views] == ["input_000", "input_001"]


def test_an_sds_folder_is_its_scene_turntable_and_progress(tmp_path: Path) -> None:
    write_sds_run(tmp_path / "sds")
    source = load_source(tmp_path / "sds")
    assert source.kind == "sds" and len(source.splats) == 30 and len(source.views) == 4
    assert [step.step for step in source.progress] == [1, 4, 12]
    assert source.info["prompt"] == "a red ball" and source.notes == ()
    # A run that has not finished: only its checkpoint's scene.
    (tmp_path / "sds" / "scene.ply").unlink()
    (tmp_path / "sds" / "sds.json").unlink()
    running = load_source(tmp_path / "sds")
    assert running.kind == "sds" and len(running.splats) == 30
    assert "checkpoint" in running.notes[0]


def test_an_edit_scene_folder_has_its_original_for_before_after(tmp_path: Path) -> None:
    write_scene(tmp_path / "original.ply", 40)
    write_edit_run(tmp_path / "edit", str(tmp_path / "original.ply"))
    source = load_source(tmp_path / "edit")
    assert source.kind == "edit-scene" and len(source.splats) == 25
    assert source.before is not None and len(source.before) == 40
    assert [step.step for step in source.progress] == [10, 11] and source.views == ()
    # A relative path recorded where the command ran, found beside the run folder.
    write_edit_run(tmp_path / "relative", "original.ply")
    assert len(load_source(tmp_path / "relative").before) == 40
    write_edit_run(tmp_path / "lost", "nowhere/original.ply")
    lost = load_source(tmp_path / "lost")
    assert lost.before is None and "nowhere/original.ply" in lost.notes[0]


def test_kinds_are_told_apart(tmp_path: Path) -> None:
    write_generation(tmp_path / "edit2d", 2)  # infer.py edit: views/ and edit.json
    (tmp_path / "edit2d" / "edit.json").write_text(json.dumps({"source_prompt": "a"}))
    write_scene(tmp_path / "fit" / "scene.ply")  # infer.py fit: scene.ply and fit.json
    (tmp_path / "fit" / "fit.json").write_text("{}")
    write_sds_run(tmp_path / "sds")
    write_edit_run(tmp_path / "edit", "x.ply")
    kinds = {name: classify(tmp_path / name) for name in ("edit2d", "fit", "sds", "edit")}
    assert kinds == {"edit2d": "generation", "fit": "scene", "sds": "sds", "edit": "edit-scene"}


def test_a_folder_of_generations_is_each_of_them_with_unique_names(tmp_path: Path) -> None:
    for name in ("000_a_red_ball", "001_a_blue_box"):
        write_generation(tmp_path / "prompts" / name, 2)
    (tmp_path / "prompts" / "notes").mkdir()
    sources = load_sources([tmp_path / "prompts"])
    assert [s.name for s in sources] == ["000_a_red_ball", "001_a_blue_box"]
    write_scene(tmp_path / "a" / "scene.ply")
    write_scene(tmp_path / "b" / "scene.ply")
    names = [s.name for s in load_sources([tmp_path / "a" / "scene.ply", tmp_path / "b"])]
    assert names == ["scene.ply", "b"]
    twice = [s.name for s in load_sources([tmp_path / "b", tmp_path / "b"])]
    assert twice == ["b", "b (2)"]


def _point_cloud(path: Path) -> None:
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                    "property float y\nproperty float z\nend_header\n0 0 0\n")  # fmt: skip


@pytest.mark.parametrize(
    ("make", "target", "message"),
    [
        (lambda root: None, "missing", "no such file or folder"),
        (lambda root: (root / "notes.txt").write_text("hi"), "notes.txt", "not a .ply file"),
        (lambda root: (root / "empty").mkdir(), "empty", "generation folder"),
        (lambda root: (root / "bad.ply").write_bytes(b"\x00garbage"), "bad.ply", "not a PLY"),
        (lambda root: _point_cloud(root / "points.ply"), "points.ply", "Gaussian splatting"),
        (
            lambda root: (root / "short.ply").write_text(
                "ply\nformat binary_little_endian 1.0\n"
                "element vertex 9\nproperty float x\n"
                "end_header\n"
            ),
            "short.ply",
            "truncated",
        ),
    ],
)
def test_bad_paths_and_corrupt_files_are_named(tmp_path: Path, make, target, message) -> None:
    make(tmp_path)
    with pytest.raises(ViewerInputError, match=message) as error:
        load_sources([tmp_path / target])
    assert str(tmp_path / target) in str(error.value)


def test_a_corrupt_file_inside_a_run_folder_is_named(tmp_path: Path) -> None:
    write_sds_run(tmp_path / "sds")
    (tmp_path / "sds" / "scene.ply").write_bytes(b"ply\nformat nonsense\nend_header\n")
    with pytest.raises(ViewerInputError, match="scene.ply"):
        load_source(tmp_path / "sds")
    write_generation(tmp_path / "gen", 3)
    (tmp_path / "gen" / "views" / "view_002.png").unlink()
    with pytest.raises(ViewerInputError, match="2 PNGs but .*cameras.json has 3 views"):
        load_source(tmp_path / "gen")
    write_generation(tmp_path / "gen2", 2)
    (tmp_path / "gen2" / "cameras.json").write_text("{not json")
    with pytest.raises(ViewerInputError, match="cameras.json: not valid JSON"):
        load_source(tmp_path / "gen2")
