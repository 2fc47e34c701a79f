"""Damaged files named, nothing lost: a truncated or corrupt weights file in an export or a
checkpoint ends in exit 2 naming it (not a traceback), and resume passes over a damaged newest
checkpoint to the one before, saying so."""

import shutil

import pytest

from viewdiff.commands import infer, train
from viewdiff.toy.assets import TOY_MULTIVIEW
from viewdiff.training.checkpoints import complete_checkpoints


def truncate(path) -> None:
    """Cut a file to half its size, as a copy or a write interrupted by a crash leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def export(tmp_path):
    """A copy of the shipped toy prior to damage."""
    return shutil.copytree(TOY_MULTIVIEW, tmp_path / "export")


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("multiview.safetensors", "multiview.safetensors: damaged or truncated safetensors"),
        ("unet/diffusion_pytorch_model.safetensors", "unet: cannot load the saved UNet"),
        ("multiview.json", "multiview.json: cannot read: Unterminated string"),
    ],
)
def test_a_damaged_export_exits_2_naming_the_file(export, tmp_path, capsys, damage, named):
    truncate(export / damage)
    argv = ["sample", "--checkpoint", str(export), "--prompt", "a red ball", "--views", "2",
            "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("infer.py sample: error: ") and named in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_resume_passes_over_a_damaged_newest_checkpoint(run_args, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(run_args(out, "train.max_steps=2", "train.checkpoint_every=1")) == 0
    (first, _), (second, newest) = complete_checkpoints(out)
    assert (first, second) == (1, 2)
    truncate(newest / "trainable.safetensors")
    capsys.readouterr()
    assert train.main(run_args(out, "train.max_steps=3", "train.checkpoint_every=1")) == 0
    err = capsys.readouterr().err
    assert f"warning: {newest} is damaged (trainable.safetensors:" in err
    assert "resuming from the checkpoint before it" in err
    assert [step for step, _ in complete_checkpoints(out)][-1] == 3


def test_a_damaged_checkpoint_named_for_resume_exits_2(run_args, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(run_args(out, "train.max_steps=1", "train.checkpoint_every=1")) == 0
    [(_, checkpoint)] = complete_checkpoints(out)
    optimizer = next(checkpoint.glob("optimizer*.bin"))
    truncate(optimizer)
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(out, "train.max_steps=2", f"train.resume={checkpoint}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"damaged checkpoint: {optimizer.name}: truncated or not a torch archive" in err
