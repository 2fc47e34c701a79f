"""``infer.py fit``: a short fit of a generation folder end to end, and bad input refused first."""

import argparse
import json
import shutil

import pytest
import torch

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands.fit import add_fit_command, fit_settings, held_out_views
from viewdiff.inference.outputs import save_generation
from viewdiff.inference.trajectory import Trajectory
from viewdiff.scene.fit import FitConfig
from viewdiff.scene.gaussians import random_scene, read_gaussian_ply
from viewdiff.scene.render import render

SIZE, VIEWS = 32, 6


@pytest.fixture(scope="module")
def generation(tmp_path_factory):
    """What infer.py sample writes for renders of a made-up object: 6 views on an orbit."""
    folder = tmp_path_factory.mktemp("fit") / "generation"
    scene = random_scene(30, sh_degree=0, generator=torch.Generator().manual_seed(0))
    trajectory = Trajectory(
        intrinsics_from_fov(48.0, SIZE, SIZE).repeat(VIEWS, 1, 1), orbit(VIEWS, 30.0, 4.0),
        (SIZE, SIZE),
    )  # fmt: skip
    with torch.no_grad():
        images = torch.stack(
            [render(scene, K, w2c, SIZE, SIZE, background=1.0).rgb for K, w2c in
             zip(trajectory.K, trajectory.w2c, strict=True)]
        )  # fmt: skip
    save_generation(folder, images.clamp(0, 1) * 2 - 1, trajectory, {"prompt": "a toy"})
    return folder


def fit_command(*argv: str) -> None:
    """Run ``infer.py fit`` through its own parser."""
    parser = argparse.ArgumentParser()
    add_fit_command(parser.add_subparsers())
    args = parser.parse_args(["fit", *argv])
    args.run(args)


SHORT = ["--iterations", "30", "--gaussians", "100", "--sh-degree", "0", "--turntable-views", "3",
         "--device", "cpu"]  # fmt: skip


def test_a_short_fit_writes_the_scene_its_scores_and_a_turntable(generation, tmp_path):
    out = tmp_path / "fit"
    fit_command("--views", str(generation), "--out", str(out), "--held-out", "5", "2", *SHORT)
    for name in ("scene.ply", "fit.json", "turntable.gif", "cameras.json", "frames/frame_002.png"):
        assert (out / name).is_file(), name
    document = json.loads((out / "fit.json").read_text())
    assert document["fit"]["iterations"] == 30 and document["initial_gaussians"] == 100
    assert read_gaussian_ply(out / "scene.ply").num_gaussians == document["gaussians"]
    train, held_out = document["train_psnr"], document["held_out_psnr"]
    assert list(train["views"]) == ["view_000.png", "view_001.png", "view_003.png", "view_004.png"]
    assert list(held_out["views"]) == ["view_002.png", "view_005.png"]
    assert all(0 < value < 100 for value in [*train["views"].values(), held_out["mean"]])
    assert document["fit_seconds"] > 0 and document["generation"]["prompt"] == "a toy"
    orbit_of_views = document["turntable"]
    assert orbit_of_views["elevation_deg"] == pytest.approx(30.0, abs=1e-3)
    assert orbit_of_views["radius"] == pytest.approx(4.0, abs=1e-4)
    assert orbit_of_views["fov_deg"] == pytest.approx(48.0, abs=1e-3)
    assert (orbit_of_views["size"], orbit_of_views["views"]) == (SIZE, 3)


def test_without_held_out_views_every_view_is_fitted(generation, tmp_path):
    fit_command("--views", str(generation), "--out", str(tmp_path / "all"), *SHORT)
    document = json.loads((tmp_path / "all" / "fit.json").read_text())
    assert len(document["train_psnr"]["views"]) == VIEWS and document["held_out_psnr"] is None


def test_held_out_views_are_checked_against_the_generation():
    assert held_out_views([4, 1, 4], 6) == ([0, 2, 3, 5], [1, 4])
    with pytest.raises(ValueError, match=r"--held-out 6: the generation has 6 views \(0..5\)"):
        held_out_views([0, 6], 6)
    with pytest.raises(ValueError, match="--held-out leaves none of the 2 views"):
        held_out_views([0, 1], 2)


def test_the_schedule_is_scaled_to_the_iterations():
    default = FitConfig()
    args = argparse.Namespace(iterations=300, sh_degree=1, background=(1, 1, 1), seed=3)
    config = fit_settings(args)
    assert (config.iterations, config.densify_until, config.densify_from) == (300, 150, 10)
    assert config.sh_increase_interval == 100 and config.opacity_reset_interval == 100
    assert (config.sh_degree, config.seed, config.background) == (1, 3, (1, 1, 1))
    args.iterations = default.iterations
    assert fit_settings(args).densify_until == default.densify_until


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ["--views", "{tmp}/missing"], "--views .*missing: no such folder"),
        ("empty", ["--views", "{tmp}/copy"], r"no views/\*\.png"),
        ("one_png_less", ["--views", "{tmp}/copy"], "5 PNGs but .*cameras.json has 6 views"),
        ("no_cameras", ["--views", "{tmp}/copy"], "no cameras.json"),
        (None, ["--views", "{generation}", "--held-out", "6"], "--held-out 6: the generation has"),
        ("bad_info", ["--views", "{tmp}/copy"], "generation.json: not valid JSON"),
        (None, ["--views", "{generation}", "--out", "{tmp}/a-file"], "is a file"),
    ],
)
def test_bad_input_is_refused_before_any_compute(generation, tmp_path, setup, argv, message):
    copy = tmp_path / "copy"
    if setup is not None:
        shutil.copytree(generation, copy)
    if setup == "empty":
        shutil.rmtree(copy / "views")
        (copy / "views").mkdir()
    elif setup == "one_png_less":
        (copy / "views" / "view_005.png").unlink()
    elif setup == "no_cameras":
        (copy / "cameras.json").unlink()
    elif setup == "bad_info":
        (copy / "generation.json").write_text("{")
    (tmp_path / "a-file").write_text("")
    argv = [part.format(tmp=tmp_path, generation=generation) for part in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=message):
        fit_command(*argv, *SHORT)
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


@pytest.mark.parametrize(
    "flag", [["--iterations", "0"], ["--sh-degree", "4"], ["--held-out", "-1"]]
)
def test_bad_numbers_exit_2_in_argparse(generation, tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        fit_command("--views", str(generation), "--out", str(tmp_path / "out"), *flag)
    assert exit_info.value.code == 2 and flag[0] in capsys.readouterr().err
