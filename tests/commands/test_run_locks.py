"""One writer per output folder: every command that writes a run folder refuses one another
live run holds (exit 2, one line naming the holder), and takes over a dead run's lock."""

import json
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands import infer
from viewdiff.commands import toy as toy_command
from viewdiff.inference.outputs import save_generation
from viewdiff.inference.trajectory import Trajectory
from viewdiff.run_lock import LOCK_FILE
from viewdiff.toy.assets import TOY_MULTIVIEW

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live_pid():
    """A process that runs for the module's tests: the holder of the locks they find."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process.pid
    process.kill()
    process.wait()


def hold(folder, pid: int) -> None:
    """Write the lock of a run with ``pid`` on this host into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": pid, "started": time.time(), "slurm_job": None}
    (folder / LOCK_FILE).write_text(json.dumps(holder))


def generation(folder):
    """A two-view generation folder (what fit reads)."""
    trajectory = Trajectory(intrinsics_from_fov(48.0, 16, 16).repeat(2, 1, 1), orbit(2, 30.0, 4.0),
                            (16, 16))  # fmt: skip
    save_generation(folder, torch.zeros(2, 3, 16, 16), trajectory, {"prompt": "a toy"})
    return folder


def command_line(name: str, tmp_path) -> list[str]:
    """The command's arguments, inputs valid up to the lock, writing into tmp_path / 'out'."""
    out = str(tmp_path / "out")
    image = tmp_path / "view.png"
    if name == "sds":
        return ["sds", "--checkpoint", str(TOY_MULTIVIEW), "--prompt", "a red ball", "--out", out]
    if name == "edit-scene":
        prompts = ["--source-prompt", "a red ball", "--prompt", "a blue ball"]
        return ["edit-scene", "--checkpoint", str(TOY_MULTIVIEW), "--scene", str(image),
                *prompts, "--out", out]  # fmt: skip
    if name == "invert":
        return ["invert", "--checkpoint", str(TOY_MULTIVIEW), "--images", str(image), "--out", out]
    if name == "fit":
        return ["fit", "--views", str(generation(tmp_path / "generation")), "--out", out]
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["sds", "edit-scene", "invert", "fit"])
def test_a_folder_another_run_holds_is_refused(name, tmp_path, live_pid, capsys):
    hold(tmp_path / "out", live_pid)
    with pytest.raises(SystemExit) as exit_info:
        infer.main(command_line(name, tmp_path))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0, message
    assert f"infer.py {name}: error: --out {tmp_path / 'out'} is in use by another run (pid " \
           f"{live_pid} on {socket.gethostname()}" in message  # fmt: skip
    assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["pid"] == live_pid  # untouched


def test_toy_pretrain_refuses_a_held_folder(tmp_path, live_pid, capsys):
    for name in ("train", "heldout"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    hold(tmp_path / "out", live_pid)
    argv = ["pretrain", "--shards", str(tmp_path / "train"), "--heldout",
            str(tmp_path / "heldout"), "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        toy_command.main(argv)
    assert exit_info.value.code == 2
    assert "is in use by another run" in capsys.readouterr().err


def test_an_ablation_refuses_a_held_work_folder(tmp_path, live_pid, capsys):
    hold(tmp_path / "work", live_pid)
    ablation = runpy.run_path(str(REPO / "bench" / "ablation.py"))
    with pytest.raises(SystemExit) as exit_info:
        ablation["main"](["--quick", "--variants", "base", "--work", str(tmp_path / "work")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"bench/ablation.py: error: --work {tmp_path / 'work'} is in use")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [LOCK_FILE]  # untouched


def test_a_dead_runs_lock_is_taken_over_and_given_back(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hold(tmp_path / "out", dead.pid)
    fit = command_line("fit", tmp_path)
    argv = [*fit, "--iterations", "2", "--gaussians", "20", "--sh-degree", "0",
            "--turntable-views", "2", "--device", "cpu"]  # fmt: skip
    assert infer.main(argv) == 0
    err = capsys.readouterr().err
    assert f"infer.py fit: warning: taking over the lock of pid {dead.pid}" in err
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # given back at the end
    assert (tmp_path / "out" / "scene.ply").is_file()
