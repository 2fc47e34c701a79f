"""Preemption: SIGTERM/SIGUSR1 -> the step finishes, a checkpoint is saved there, exit 3; the
run resumes from it (mid data segment) to the parameters of an uninterrupted run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from accelerate import Accelerator

import train
from viewdiff.training.checkpoints import complete_checkpoints, read_training_state
from viewdiff.training.signals import PREEMPTED_EXIT_CODE, StopRequest


def test_stop_request_records_the_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    accelerator = Accelerator(cpu=True)
    with StopRequest() as stop:
        assert not stop.agreed(accelerator)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == "SIGUSR1" and stop.agreed(accelerator)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_sigterm_saves_a_checkpoint_exits_3_and_resumes_exactly(
    resume_args, uninterrupted, start_training, wait_for, assert_same_training, tmp_path
):
    out = tmp_path / "run"
    log = tmp_path / "preempted.log"
    process = start_training(resume_args(out), log)
    wait_for(out / "checkpoints" / "checkpoint-3", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == PREEMPTED_EXIT_CODE == 3
    (step, checkpoint), *_ = reversed(complete_checkpoints(out))
    assert 3 <= step < 8 and read_training_state(checkpoint).step == step
    assert f"stop requested (SIGTERM): checkpoint {checkpoint}" in log.read_text()
    assert not list((out / "checkpoints").glob("*.tmp")) and not (out / "model").exists()
    # Requeued: resume=latest continues from the stop (mid segment when step % 3 != 0).
    assert train.main(resume_args(out)) == 0
    assert_same_training(out, uninterrupted)


def _python(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_stop_signal_before_the_loop_exits_3_not_by_signal(run_args, subprocess_env, tmp_path):
    repo = Path(train.__file__).parent
    # During the imports: as soon as train.py's first import has run.
    early = (
        "import os, signal, viewdiff.training.early_signals; os.kill(os.getpid(), signal.SIGTERM)"
    )
    assert (
        _python(early + "; print('alive')", subprocess_env, repo).returncode == PREEMPTED_EXIT_CODE
    )
    # During the preflight (train.py's checks of the inputs): SIGUSR1.
    args = run_args(tmp_path / "run")
    during = (
        "import os, signal\n"
        "import viewdiff.commands.train as train\n"
        "def checks(config):\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    raise AssertionError('the signal did not stop the run')\n"
        "train.check_inputs = checks\n"
        f"train.main({args!r})\n"
    )
    result = _python(during, subprocess_env, repo)
    assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # nothing was started
