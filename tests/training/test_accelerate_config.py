"""accelerate's own settings count where the config leaves them open: `accelerate launch
--mixed_precision` sets the run's precision (recorded in config.json) unless the config sets
train.mixed_precision; the trackers of train.report_to go through accelerate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[2]


def recorded_precision(out: Path) -> str | None:
    """train.mixed_precision in a run's config.json."""
    return json.loads((out / "config.json").read_text())["train"]["mixed_precision"]


def test_accelerate_launch_mixed_precision_is_the_runs(run_args, subprocess_env, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
        "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
        str(REPO / "train.py"), *run_args(out, "train.max_steps=1", "train.checkpoint_every=1"),
    ]  # fmt: skip
    result = subprocess.run(
        command, env=subprocess_env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert recorded_precision(out) == "bf16"
    assert recorded_precision(out / "model") == "bf16"  # the export's config too


def test_the_configs_precision_overrides_accelerates(run_args, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what accelerate launch sets
    out = tmp_path / "run"
    args = run_args(out, "train.max_steps=1", "train.mixed_precision=no", "train.report_to=")
    assert train.main(args) == 0
    assert recorded_precision(out) == "no"
    assert not (out / "logs").exists() or not any((out / "logs").rglob("events.*"))


def test_accelerates_fp16_without_cuda_exits_2_naming_accelerate(
    run_args, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(tmp_path / "run"))
    assert exit_info.value.code == 2
    assert "accelerate's mixed_precision=fp16 needs a CUDA device" in capsys.readouterr().err
