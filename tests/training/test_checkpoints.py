"""Checkpoint folders (complete, latest, pruned, interrupted), the export swap, the learning-rate
schedules (the EMA: test_ema.py)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers.optimization import get_scheduler
from torch import nn

from viewdiff.config import TrainConfig
from viewdiff.training.checkpoints import (
    STATE_FILE,
    TrainingState,
    complete_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
    read_training_state,
    remove_incomplete,
    resolve_resume,
)
from viewdiff.training.export import recover_export
from viewdiff.training.optim import learning_rate_schedule, set_learning_rates


def fake_checkpoint(out, name, complete=True):
    """A checkpoint folder, with its state file when ``complete``."""
    folder = out / "checkpoints" / name
    folder.mkdir(parents=True)
    if complete:
        state = TrainingState(
            step=int(name.split("-")[1].split(".")[0]),
            seed=0,
            segment_steps=2,
            world_size=1,
            num_workers=0,
        )
        values = {"format": "viewdiff.training_state/1", **dataclasses.asdict(state)}
        (folder / STATE_FILE).write_text(json.dumps(values))
    return folder


def test_latest_is_the_newest_complete_checkpoint_and_prune_keeps_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path) is None and resolve_resume("latest", tmp_path) is None
    for step in (2, 10, 4):
        fake_checkpoint(tmp_path, f"checkpoint-{step}")
    fake_checkpoint(tmp_path, "checkpoint-12.tmp")  # interrupted while writing
    fake_checkpoint(tmp_path, "checkpoint-14", complete=False)  # written by a non-atomic tool
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2, 4, 10]
    assert resolve_resume("latest", tmp_path) == tmp_path / "checkpoints" / "checkpoint-10"
    assert read_training_state(latest_checkpoint(tmp_path)).step == 10
    removed = remove_incomplete(tmp_path)
    assert sorted(path.name for path in removed) == ["checkpoint-12.tmp", "checkpoint-14"]
    assert [path.name for path in prune_checkpoints(tmp_path, keep=2)] == ["checkpoint-2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint-10",
        "checkpoint-4",
    ]


def test_resume_paths(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        resolve_resume(str(tmp_path / "gone"), tmp_path)
    partial = fake_checkpoint(tmp_path, "checkpoint-3", complete=False)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(str(partial), tmp_path)
    (partial / STATE_FILE).write_text(json.dumps({"format": "other", "step": 3}))
    with pytest.raises(ValueError, match="not a viewdiff.training_state/1 file"):
        read_training_state(partial)


def test_an_interrupted_export_swap_is_repaired(tmp_path):
    (tmp_path / "model.old").mkdir()
    (tmp_path / "model.old" / "multiview.json").write_text("{}")
    (tmp_path / "model.tmp").mkdir()  # the new export was not complete
    recover_export(tmp_path)
    assert (tmp_path / "model" / "multiview.json").is_file()
    assert not (tmp_path / "model.old").exists() and not (tmp_path / "model.tmp").exists()


@pytest.mark.parametrize(
    "name", ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
)
def test_learning_rates_are_those_of_diffusers_get_scheduler_stepped_as_its_examples(name):
    train = TrainConfig(
        lr_scheduler=name, lr_warmup_steps=3, max_steps=12, lr_num_cycles=2, lr_power=2.0
    )
    ours = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "base_lr": 5e-5}])
    theirs = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=train.learning_rate)
    schedule = get_scheduler(name, theirs, num_warmup_steps=3, num_training_steps=12,
                             num_cycles=2, power=2.0)  # fmt: skip
    seen = []
    for step in range(12):  # optimizer.step(), then lr_scheduler.step(), as diffusers' examples
        set_learning_rates(ours, step, train)
        assert ours.param_groups[0]["lr"] == pytest.approx(schedule.get_last_lr()[0], rel=1e-12)
        seen.append(ours.param_groups[0]["lr"])
        theirs.step()
        schedule.step()
    assert seen[0] == 0.0 and max(seen) == pytest.approx(5e-5)


def test_piecewise_constant_rules():
    train = TrainConfig(lr_scheduler="piecewise_constant", lr_step_rules="1:2,0.1:4,0.01")
    assert [learning_rate_schedule(train)(s) for s in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]


def _write_files(folder: Path, files: dict[str, str]) -> None:
    """A folder holding ``files`` (name -> text)."""
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_remove_incomplete_puts_back_a_checkpoint_cut_between_its_renames(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    _write_files(checkpoints / "checkpoint-4.old", {STATE_FILE: "{}"})  # cut between renames
    _write_files(checkpoints / "checkpoint-4.tmp", {STATE_FILE: "{}"})
    _write_files(checkpoints / "checkpoint-2", {STATE_FILE: "{}"})
    _write_files(checkpoints / "checkpoint-2.old", {STATE_FILE: "{}"})  # cut after the renames
    removed = remove_incomplete(tmp_path)
    assert sorted(path.name for path in removed) == ["checkpoint-2.old", "checkpoint-4.tmp"]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2, 4]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
