"""A full disk: checked before every checkpoint, caught while writing, exit 1 naming the last."""

import errno
import shutil
from collections import namedtuple

import pytest
from accelerate import Accelerator

import train
from viewdiff.disk_full import DiskFullError
from viewdiff.training import checkpoints
from viewdiff.training.checkpoints import check_free_space, complete_checkpoints

Usage = namedtuple("Usage", "total used free")
STEPS = ("train.max_steps=4", "train.checkpoint_every=2", "train.export_every=0")


def test_free_space_is_compared_with_the_last_checkpoint(tmp_path, monkeypatch):
    check_free_space(tmp_path)  # nothing to compare with yet
    done = tmp_path / "checkpoints" / "checkpoint-2"
    done.mkdir(parents=True)
    (done / "training_state.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"x" * 3 * 2**20)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda _: Usage(0, 0, 2**20))
    with pytest.raises(DiskFullError, match=r"disk full: 1 MB free, a checkpoint needs ~3 MB"):
        check_free_space(tmp_path)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda _: Usage(0, 0, 2**30))
    check_free_space(tmp_path)


def _only_after_the_first_checkpoint(out, small):
    real = shutil.disk_usage

    def usage(path):
        return small if complete_checkpoints(out) else real(path)

    return usage


def test_a_disk_found_full_stops_the_run_with_exit_1(run_args, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    small = Usage(0, 0, 1024)
    monkeypatch.setattr(
        checkpoints.shutil, "disk_usage", _only_after_the_first_checkpoint(out, small)
    )
    assert train.main(run_args(out, *STEPS)) == 1
    error = capsys.readouterr().err
    assert "disk full: 0 MB free" in error and "checkpoint-2" in error
    assert [step for step, _ in complete_checkpoints(out)] == [2]
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_a_disk_that_fills_while_writing_stops_the_run_with_exit_1(
    run_args, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    real = Accelerator.save_state

    def save_state(self, folder, *args, **kwargs):
        if complete_checkpoints(out):  # the second checkpoint: the disk fills under it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, folder, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    assert train.main(run_args(out, *STEPS)) == 1
    error = capsys.readouterr().err
    assert "disk full while writing" in error and "checkpoint-2" in error
    assert [step for step, _ in complete_checkpoints(out)] == [2]
    assert not list((out / "checkpoints").glob("*.tmp"))
