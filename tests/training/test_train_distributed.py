"""Two ranks on the CPU (torchrun, gloo): training finishes without hanging, the ranks draw
different data, and a stop signal to one rank stops both after the same step."""

import json
import os
import signal
from pathlib import Path

from viewdiff.training.checkpoints import complete_checkpoints, read_training_state
from viewdiff.training.signals import PREEMPTED_EXIT_CODE


def drawn(checkpoint: Path, rank: int) -> list:
    """The samples (key, frame numbers) a rank trained on in the checkpoint's last step."""
    position = json.loads((checkpoint / f"data-rank{rank}.json").read_text())
    assert position["rank"] == rank
    return position["last_step_samples"]


def test_two_ranks_train_on_different_data(run_args, start_training, tmp_path):
    out = tmp_path / "run"
    argv = run_args(
        out, "train.max_steps=3", "train.checkpoint_every=1", "train.checkpoints_keep=3"
    )
    log = tmp_path / "torchrun.log"
    process = start_training(argv, log, nproc=2)
    assert process.wait(timeout=240) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "step 3/3 | loss" in text and "| 2 ranks" in text and "| 1 rank\n" not in text
    checkpoints = [path for _, path in complete_checkpoints(out)]
    assert len(checkpoints) == 3 and (out / "model" / "multiview.safetensors").is_file()
    assert read_training_state(checkpoints[-1]).world_size == 2
    per_rank = [[drawn(path, rank) for path in checkpoints] for rank in (0, 1)]
    assert per_rank[0] != per_rank[1]


def child_with_rank(parent: int, rank: int) -> int:
    """The pid of torchrun's worker process of ``rank``."""
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank} among {children}")


def test_a_signal_to_one_rank_stops_both_after_the_same_step(
    run_args, start_training, wait_for, tmp_path
):
    out = tmp_path / "run"
    argv = run_args(out, "train.max_steps=500", "train.checkpoint_every=2")
    log = tmp_path / "torchrun.log"
    process = start_training(argv, log, nproc=2)
    wait_for(out / "checkpoints" / "checkpoint-2", process)
    signal_to = child_with_rank(process.pid, rank=1)
    os.kill(signal_to, signal.SIGUSR1)  # rank 1 only; rank 0 learns it from the all-reduce
    # torchrun reports its workers' status 3 as a failure of its own (exit 1).
    assert process.wait(timeout=240) != 0
    text = log.read_text()
    # The first worker to finish reports 3; torchrun may stop the other before it reports its own.
    assert f"exitcode  : {PREEMPTED_EXIT_CODE} (pid:" in text, text[-3000:]
    (step, checkpoint), *_ = reversed(complete_checkpoints(out))
    assert 2 < step < 500, text[-3000:]
    assert f"stop requested (a signal on another rank): checkpoint {checkpoint}" in text
    positions = [json.loads((checkpoint / f"data-rank{r}.json").read_text()) for r in (0, 1)]
    assert [position["step"] for position in positions] == [step, step]
