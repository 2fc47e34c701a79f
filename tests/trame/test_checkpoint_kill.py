"""TrAME's checkpoint write killed before any rename or removal: after its recovery the reader
finds the old checkpoint or the new one, bit for bit, and the write completes in the end."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from viewdiff.editing.editing_model import load_editing_model
from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.scene.fit import FitConfig
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.trame.config import TrameConfig
from viewdiff.trame.editor import STATE_FORMAT, TrameEditor

ROOT = Path(__file__).resolve().parents[2]

# The child writes the editor's new checkpoint over the old one with ``save``'s writer; the
# kill_at-th call to a patched function SIGKILLs it just before the call runs. It imports no
# diffusers: it reads what to write from the checkpoint the parent's editor saved.
WRITER = """
import os, shutil, signal, sys
from pathlib import Path

from viewdiff.scene.checkpoint import read_checkpoint, write_checkpoint

final, kill_at, source, format = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
written = read_checkpoint(source, format, "the checkpoint to write")  # before any patch
state = {key: value for key, value in written.state.items() if key != "format"}
calls = 0


def killed_before(function):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)

    return call


for module, name in [(os, "replace"), (os, "rename"), (shutil, "rmtree")]:
    setattr(module, name, killed_before(getattr(module, name)))
write_checkpoint(final, format, written.scene, dict(written.tensors), state)
"""


@pytest.fixture(scope="module")
def editing(tiny_export):
    return load_editing_model(tiny_export)


def _editor(editing) -> TrameEditor:
    """The smallest edit of the editor tests: 300 Gaussians, 4 views, 3 trajectory steps."""
    generator = torch.Generator().manual_seed(2)
    scene = GaussianScene.random_in_sphere(300, 0.6, sh_degree=0, generator=generator)
    fit = FitConfig(sh_degree=0, densify_until=0)
    config = TrameConfig(steps=6, start=3, updates=((0, 2),), keyframe_every=2, fit=fit)
    cameras = orbit_trajectory(4, 30.0, 4.0, 64)
    return TrameEditor(editing, scene, cameras, "a red ball", "a blue box", config)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a checkpoint folder: name -> bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_killed_checkpoint_write_leaves_the_old_or_the_new_checkpoint(editing, tmp_path):
    editor = _editor(editing)
    old = _files(editor.save(tmp_path / "old"))  # before the first step
    editor.step()
    new = _files(editor.save(tmp_path / "new"))  # what the child must write
    assert old.keys() == new.keys() and all(old[name] != new[name] for name in old)
    reader = _editor(editing)
    outcomes = []
    for kill_at in range(1, 30):
        final = tmp_path / str(kill_at) / "checkpoint"
        shutil.copytree(tmp_path / "old", final)
        arguments = [str(final), str(kill_at), str(tmp_path / "new"), STATE_FORMAT]
        child = subprocess.run(
            [sys.executable, "-c", WRITER, *arguments], cwd=ROOT, capture_output=True, timeout=120
        )
        if child.returncode == 0:
            assert _files(final) == new
            outcomes.append("done")
            break
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()
        reader.load(final)  # recovers what the kill left, then reads it whole
        found = _files(final)
        assert found in (old, new), f"killed before call {kill_at}: a broken checkpoint"
        assert reader.position == (0 if found == old else 1)
        assert sorted(path.name for path in final.parent.iterdir()) == ["checkpoint"]
        outcomes.append("old" if found == old else "new")
    assert outcomes[-1] == "done", "the write was still killed after 29 calls"
    # The kills fell before and after the switch, and every rename and removal was one.
    assert outcomes[0] == "old" and "new" in outcomes and len(outcomes) >= 5, outcomes
