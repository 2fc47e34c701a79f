"""SIGKILL at a moment the test chooses, resume, and end bit-equal to an uninterrupted run:
``infer.py fit``, ``sds``, ``edit-scene`` and ``invert`` (issue 32, item 1; ``toy pretrain`` and
``bench/ablation.py`` are tests/toy/test_pretrain_kill.py's and tests/test_ablation.py's). A kill
inside a checkpoint write is tests/test_atomic_folder.py's and tests/trame/test_checkpoint_kill.py's
(the same folder swap); inside an inversion's save, here."""

import contextlib
import errno
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from tests.commands.kill_runs import (
    REPO,
    finish,
    kill_after_checkpoint,
    kill_when,
    progress,
    start,
)
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.editing.inversion import Inversion
from viewdiff.editing.inversion_folder import FORMAT, read_inversion, save_inversion
from viewdiff.inference.outputs import save_generation
from viewdiff.inference.trajectory import Trajectory
from viewdiff.scene.gaussians import random_scene, write_gaussian_ply
from viewdiff.scene.render import render
from viewdiff.toy.assets import TOY_MULTIVIEW

infer = start  # infer.py is start()'s default script


@pytest.fixture(scope="module")
def generation(tmp_path_factory):
    """Six rendered views of a made-up object, as infer.py sample writes them."""
    folder = tmp_path_factory.mktemp("kill") / "generation"
    scene = random_scene(30, sh_degree=0, generator=torch.Generator().manual_seed(0))
    trajectory = Trajectory(intrinsics_from_fov(48.0, 32, 32).repeat(6, 1, 1), orbit(6, 30.0, 4.0),
                            (32, 32))  # fmt: skip
    with torch.no_grad():
        cameras = zip(trajectory.K, trajectory.w2c, strict=True)
        images = torch.stack([render(scene, K, w2c, 32, 32, background=1.0).rgb
                              for K, w2c in cameras])  # fmt: skip
    save_generation(folder, images.clamp(0, 1) * 2 - 1, trajectory, {"prompt": "a toy"})
    return folder


def test_a_fit_killed_twice_resumes_to_the_uninterrupted_scene(generation, tmp_path):
    fit = ["fit", "--views", str(generation), "--iterations", "240", "--gaussians", "300",
           "--sh-degree", "1", "--turntable-views", "2", "--device", "cpu",
           "--checkpoint-every", "20"]  # fmt: skip
    finish(infer(*fit, "--out", str(tmp_path / "whole")))
    out, checkpoint = tmp_path / "killed", tmp_path / "killed" / "checkpoint"
    kills = []
    kills.append(kill_after_checkpoint(infer(*fit, "--out", str(out)),
                                       checkpoint / "state.json", "iteration", 60))  # fmt: skip
    resumed = infer(*fit, "--out", str(out), "--resume", str(checkpoint))
    kills.append(kill_after_checkpoint(resumed, checkpoint / "state.json", "iteration", 160))
    finish(infer(*fit, "--out", str(out), "--resume", str(checkpoint)))
    assert kills[0] < kills[1] < 240
    whole, killed = (
        (tmp_path / "whole" / "scene.ply").read_bytes(),
        (out / "scene.ply").read_bytes(),
    )
    assert killed == whole, f"killed at {kills}: the resumed scene differs"
    scores = [json.loads((folder / "fit.json").read_text())["train_psnr"]
              for folder in (tmp_path / "whole", out)]  # fmt: skip
    assert scores[0] == scores[1]


def test_a_resume_of_another_fit_is_refused(generation, tmp_path, capsys):
    from viewdiff.commands import infer as infer_command

    base = ["fit", "--views", str(generation), "--iterations", "20", "--gaussians", "50",
            "--sh-degree", "0", "--turntable-views", "2", "--device", "cpu",
            "--checkpoint-every", "10"]  # fmt: skip
    assert infer_command.main([*base, "--out", str(tmp_path / "a")]) == 0
    argv = [*base, "--seed", "1", "--out", str(tmp_path / "b"), "--resume",
            str(tmp_path / "a" / "checkpoint")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        infer_command.main(argv)
    assert exit_info.value.code == 2
    assert "a checkpoint of another fit (its fit, seed differ" in capsys.readouterr().err


def test_sds_killed_twice_resumes_to_the_uninterrupted_scene(tmp_path):
    preset = yaml.safe_load((REPO / "configs" / "sds_tiny.yaml").read_text())
    preset["sds"] |= {"steps": 12, "checkpoint_every": 2, "eval_every": 0, "num_gaussians": 300}
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    sds = ["sds", "--checkpoint", str(TOY_MULTIVIEW), "--prompt", "a red ball", "--config",
           str(tmp_path / "preset.yaml"), "--device", "cpu"]  # fmt: skip
    finish(infer(*sds, "--out", str(tmp_path / "whole")))
    out, checkpoint = tmp_path / "killed", tmp_path / "killed" / "checkpoint"
    kills = [kill_after_checkpoint(infer(*sds, "--out", str(out)), checkpoint / "state.json",
                                   "step", 4)]  # fmt: skip
    resumed = infer(*sds, "--out", str(out), "--resume", str(checkpoint))
    kills.append(kill_after_checkpoint(resumed, checkpoint / "state.json", "step", 8))
    finish(infer(*sds, "--out", str(out), "--resume"))  # alone: OUT/checkpoint
    assert kills[0] < kills[1] < 12
    whole, killed = (
        (tmp_path / "whole" / "scene.ply").read_bytes(),
        (out / "scene.ply").read_bytes(),
    )
    assert killed == whole, f"killed at {kills}: the resumed scene differs"


def test_a_full_disk_during_a_scene_checkpoint_ends_with_exit_1_and_keeps_the_last(
    generation, tmp_path, monkeypatch, capsys
):
    from viewdiff.commands import infer as infer_command
    from viewdiff.scene import checkpoint as scene_checkpoint

    real, calls = scene_checkpoint.save_file, []

    def save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: the disk fills under it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(scene_checkpoint, "save_file", save_file)
    out = tmp_path / "fit"
    argv = ["fit", "--views", str(generation), "--iterations", "40", "--gaussians", "50",
            "--sh-degree", "0", "--turntable-views", "2", "--device", "cpu",
            "--checkpoint-every", "10", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        infer_command.main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"infer.py fit: disk full while writing {out / 'checkpoint'} (")
    assert err.endswith(f"the last complete checkpoint is {out / 'checkpoint'}")
    assert json.loads((out / "checkpoint" / "state.json").read_text())["iteration"] == 10
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint"
    ]  # no staging folder left


def test_an_edit_scene_killed_twice_resumes_to_the_uninterrupted_scene(tmp_path):
    scene = tmp_path / "scene.ply"
    write_gaussian_ply(scene, random_scene(200, sh_degree=0,
                                           generator=torch.Generator().manual_seed(1)))  # fmt: skip
    edit = ["edit-scene", "--checkpoint", str(TOY_MULTIVIEW), "--scene", str(scene), "--views",
            "4", "--source-prompt", "a red ball", "--prompt", "a blue ball", "--steps", "8",
            "--start", "2", "--keyframe-every", "2", "--device", "cpu"]  # fmt: skip
    finish(infer(*edit, "--out", str(tmp_path / "whole")))
    steps = len(json.loads((tmp_path / "whole" / "edit.json").read_text())["steps"])
    out, checkpoint = tmp_path / "killed", tmp_path / "killed" / "checkpoint"
    kills = [kill_after_checkpoint(infer(*edit, "--out", str(out)), checkpoint / "state.json",
                                   "position", 2)]  # fmt: skip
    resumed = infer(*edit, "--out", str(out), "--resume")
    kills.append(kill_after_checkpoint(resumed, checkpoint / "state.json", "position", 4))
    finish(infer(*edit, "--out", str(out), "--resume"))
    assert kills[0] < kills[1] < steps
    whole, killed = (
        (tmp_path / "whole" / "scene.ply").read_bytes(),
        (out / "scene.ply").read_bytes(),
    )
    assert killed == whole, f"killed at {kills}: the resumed scene differs"


def test_an_invert_killed_inside_a_step_reruns_to_the_uninterrupted_files(generation, tmp_path):
    views = sorted(str(p) for p in generation.rglob("view_*.png"))
    invert = ["invert", "--checkpoint", str(TOY_MULTIVIEW), "--images", *views, "--cameras",
              str(generation / "cameras.json"), "--prompt", "a red ball", "--steps", "16",
              "--device", "cpu"]  # fmt: skip
    finish(infer(*invert, "--out", str(tmp_path / "whole")))
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    killed = infer(*invert, "--out", str(out), log=log)
    kill_when(killed, lambda: progress(log, "invert") >= 6, "inversion step 6")
    assert not (out / "inversion.json").exists()
    finish(infer(*invert, "--out", str(out)))  # the dead run's lock is taken over
    for name in ("inversion.safetensors", "inversion.json", "cameras.json", "reconstruction.json"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_an_inversion_cut_at_any_point_of_its_save_is_the_old_or_the_new_never_a_mix(
    tmp_path, monkeypatch
):
    def inversion(seed: int, steps: int) -> Inversion:
        generator = torch.Generator().manual_seed(seed)
        xs = torch.randn(steps + 1, 2, 4, 8, 8, generator=generator)
        zs = torch.randn(steps, 2, 4, 8, 8, generator=generator)
        return Inversion(torch.arange(steps), xs, zs, torch.zeros(2, dtype=torch.bool))

    cameras = Trajectory(intrinsics_from_fov(40.0, 64, 64).repeat(2, 1, 1), orbit(2, 30.0, 4.0),
                         (64, 64))  # fmt: skip
    saves = {3: inversion(0, 3), 5: inversion(1, 5)}  # by their step counts

    def save(folder: Path, steps: int) -> None:
        document = {"format": FORMAT, "kind": "multiview", "steps": steps}
        save_inversion(folder, saves[steps], document, cameras)

    class Killed(BaseException):
        """The process died here."""

    def dying(name: str, real):
        def call(*args, **kwargs):
            if cut[0] == 0:
                raise Killed(name)
            cut[0] -= 1
            return real(*args, **kwargs)

        return call

    outcomes = []
    for point in range(9):  # before each fsync, unlink and rename of the save, and after all
        folder = tmp_path / f"cut{point}"
        folder.mkdir()
        save(folder, 3)
        cut = [point]
        with monkeypatch.context() as patch:
            for name in ("fsync", "unlink", "replace"):
                patch.setattr(os, name, dying(name, getattr(os, name)))
            with contextlib.suppress(Killed):
                save(folder, 5)
        try:
            document, read = read_inversion(folder)
        except ValueError as error:
            assert "inversion.json: cannot read" in str(error)
            outcomes.append("none")
            continue
        expected = saves[document["steps"]]
        assert torch.equal(read.xs, expected.xs) and torch.equal(read.zs, expected.zs)
        outcomes.append(document["steps"])
    # fsync x3 and the old document's unlink: the old; the renames: none; then the new.
    assert outcomes == [3, 3, 3, 3, "none", "none", "none", 5, 5], outcomes
