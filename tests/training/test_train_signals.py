"""Preemption: SIGTERM/SIGUSR1 -> the step finishes, a checkpoint is saved there, exit 3; the
run resumes from it (mid data segment) to the parameters of an uninterrupted run."""

import os
import signal

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
