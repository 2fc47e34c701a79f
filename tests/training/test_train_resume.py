"""Exact resume: a run killed (SIGKILL) mid-training and resumed from latest reaches the
parameters of an uninterrupted run; interrupted saves are ignored and cleaned up."""

import signal

from safetensors.torch import load_file

import train
from viewdiff.training.checkpoints import complete_checkpoints


def test_killed_run_resumes_from_latest_to_the_uninterrupted_parameters(
    resume_args, uninterrupted, start_training, wait_for, assert_same_training, tmp_path, capsys
):
    out = tmp_path / "run"
    process = start_training(resume_args(out), tmp_path / "killed.log")
    wait_for(out / "checkpoints" / "checkpoint-3", process)
    process.send_signal(signal.SIGKILL)  # no handler, no cleanup: as a crash or OOM kill
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "model").exists()  # it did not finish
    saved = [step for step, _ in complete_checkpoints(out)]
    assert saved and saved[-1] < 8
    # What a kill during a save leaves: a .tmp folder, a folder without its state.
    (out / "checkpoints" / "checkpoint-99.tmp").mkdir()
    (out / "checkpoints" / "checkpoint-99.tmp" / "optimizer.bin").write_bytes(b"partial")
    (out / "checkpoints" / "checkpoint-98").mkdir()
    assert train.main(resume_args(out)) == 0
    resumed_from = out / "checkpoints" / f"checkpoint-{saved[-1]}"
    assert f"resumed from {resumed_from} at step {saved[-1]}" in capsys.readouterr().out
    assert not (out / "checkpoints" / "checkpoint-99.tmp").exists()
    assert not (out / "checkpoints" / "checkpoint-98").exists()
    assert_same_training(out, uninterrupted)


def test_resume_reference_is_not_trivial(uninterrupted):
    # The comparison means something: training moved the weights, and the EMA lags behind them.
    final = load_file(uninterrupted / "checkpoints" / "checkpoint-8" / "trainable.safetensors")
    first = load_file(uninterrupted / "checkpoints" / "checkpoint-3" / "trainable.safetensors")
    ema = load_file(uninterrupted / "checkpoints" / "checkpoint-8" / "ema.safetensors")
    key = "unet.conv_in.weight"
    assert (final[key] - first[key]).abs().max() > 1e-4
    assert (final[key] - ema[f"shadow.{key}"]).abs().max() > 1e-6


def test_a_resume_with_another_world_size_needs_consent(uninterrupted, monkeypatch):
    import dataclasses

    import pytest

    from viewdiff.config import read_config_json
    from viewdiff.training.preflight import InputError, check_resume_config

    _, checkpoint = complete_checkpoints(uninterrupted)[-1]
    config = read_config_json(checkpoint / "config.json")
    check_resume_config(checkpoint, config)  # 1 rank, as it was written
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match=r"written by 1 rank\(s\), this run has 2"):
        check_resume_config(checkpoint, config)
    allowed = dataclasses.replace(
        config, train=dataclasses.replace(config.train, allow_world_size_change=True)
    )
    check_resume_config(checkpoint, allowed)
