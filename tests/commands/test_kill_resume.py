"""SIGKILL at a moment the test chooses, resume, and end bit-equal to an uninterrupted run:
``infer.py fit`` and ``infer.py sds`` (issue 32, item 1). A kill inside a checkpoint write is
tests/test_atomic_folder.py's and tests/trame/test_checkpoint_kill.py's (the same folder swap)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.inference.outputs import save_generation
from viewdiff.inference.trajectory import Trajectory
from viewdiff.scene.gaussians import random_scene
from viewdiff.scene.render import render
from viewdiff.toy.assets import TOY_MULTIVIEW

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TIMEOUT_S = 600  # each run takes seconds when quiet; a loaded CI machine gets 5x and more


def infer(*argv: str) -> subprocess.Popen:
    """``infer.py`` in a subprocess of its own (a process group, so that a kill takes it all)."""
    return subprocess.Popen([sys.executable, str(REPO / "infer.py"), *argv], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


def finish(process: subprocess.Popen) -> None:
    """Wait for a run to end well."""
    _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err.decode()[-2000:]


def kill_after_checkpoint(process: subprocess.Popen, state: Path, step_key: str, step: int) -> int:
    """SIGKILL the run once its checkpoint reached ``step``; the step it had saved."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        try:
            saved = json.loads(state.read_text())[step_key]
        except (OSError, ValueError, KeyError):
            saved = -1
        if saved >= step:
            break
        assert time.monotonic() < deadline, f"no checkpoint of step {step} in {TIMEOUT_S} s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return saved


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
