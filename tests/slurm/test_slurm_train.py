"""slurm/train.sbatch against a real one-node Slurm: two ranks train and checkpoint (one task per
rank, and one accelerate launcher for both); a preempted job (SIGUSR1 to the batch script, as
``--signal=B:USR1@N`` sends it before the time limit) saves a checkpoint, exits 3, requeues
itself and resumes from that checkpoint to the last step.

Without a cluster, the script's input checks run as plain bash.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
from local_slurm import FINAL_STATES, LocalSlurm, wait_for

from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "slurm" / "train.sbatch"
PREEMPTED_EXIT_CODE = 3  # viewdiff.training.signals.PREEMPTED_EXIT_CODE
# 2 tasks x 1 CPU: the 2 cores of the test machine.
TASK_OPTIONS = ["--ntasks-per-node=2", "--cpus-per-task=1", "--job-name=viewdiff-test"]
JOB_TIMEOUT = 240  # seconds; a run of a few tiny steps takes well under a minute
SUMMARY = re.compile(r"step (\d+)/(\d+) \|.*\| (\d+) ranks?$", re.MULTILINE)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny shards: 2 synthetic objects x 2 chunks of 64 px views."""
    co3d = make_synthetic_dataset(
        tmp_path_factory.mktemp("co3d"), ("box",), 2, 12, (96, 72), seed=0, points=500
    )
    out = tmp_path_factory.mktemp("shards")
    write_shards(co3d, out, ShardOptions(image_size=64, max_frames=6, samples_per_shard=2))
    return out


def train_args(tiny_sd: Path, shards: Path, output_dir: Path, max_steps: int) -> list[str]:
    """The script's arguments: the tiny preset pointed at the test's model, data and run folder."""
    return [
        "configs/tiny_cpu.yaml",
        f"model.pretrained_model={tiny_sd}",
        f"data.shards={shards}",
        f"train.output_dir={output_dir}",
        f"train.max_steps={max_steps}",
        "train.batch_size=1",
        "train.log_every=1",
        "train.checkpoint_every=1000",  # only the final and the preemption checkpoints
        "train.validate_every=1000",
        "data.num_workers=0",
    ]


def submit(cluster: LocalSlurm, log: Path, args: list[str]) -> int:
    """sbatch the script from the repository root with 2 tasks, output appended to ``log``."""
    return cluster.sbatch(SBATCH, [*TASK_OPTIONS, f"--output={log}"], args, cwd=REPO)


def output(log: Path) -> str:
    """The job's output so far. srun interleaves the tasks' bytes, which may split a UTF-8
    character of a progress bar: those are replaced, the lines the test reads are ASCII."""
    return log.read_bytes().decode("utf-8", errors="replace") if log.exists() else ""


def finished(cluster: LocalSlurm, job: int, log: Path) -> dict[str, str]:
    """Wait for the job to end; its scontrol fields. Fails with its output and the daemons' logs."""
    try:
        return cluster.wait_for_state(job, FINAL_STATES, JOB_TIMEOUT)
    except TimeoutError as error:
        pytest.fail(f"{error}\n--- job output\n{output(log)}\n{cluster.logs()}")


def summaries(text: str) -> list[tuple[int, int, int]]:
    """(step, max_steps, ranks) of every summary line of train.py."""
    return [tuple(map(int, match)) for match in SUMMARY.findall(text)]


@pytest.mark.slurm
def test_two_tasks_train_and_checkpoint(
    slurm_cluster: LocalSlurm, tiny_sd: Path, shards: Path, tmp_path: Path
) -> None:
    log, run = tmp_path / "job.out", tmp_path / "run"
    job = submit(slurm_cluster, log, train_args(tiny_sd, shards, run, max_steps=3))
    fields = finished(slurm_cluster, job, log)
    text = output(log)
    assert fields["JobState"] == "COMPLETED", text
    assert fields["ExitCode"] == "0:0" and fields["Restarts"] == "0", fields

    # The script: one run, 2 tasks, a rendezvous on the head node, resume=latest appended.
    assert "SLURM_RESTART_COUNT=0" in text
    assert "starting 2 tasks (2 per node), world size 2" in text
    assert re.search(r"rendezvous=localhost:\d+ ", text), text
    assert "train.resume=latest" in text
    assert "training exited with status 0" in text and "requeue" not in text

    # train.py: every step logged once (by the main rank only) on 2 ranks.
    assert summaries(text) == [(1, 3, 2), (2, 3, 2), (3, 3, 2)], text

    # Both ranks took part in the checkpoint; the run folder holds config and export.
    checkpoint = run / "checkpoints" / "checkpoint-3"
    assert checkpoint.is_dir(), sorted(p.name for p in run.rglob("*"))
    assert {p.name for p in checkpoint.glob("data-rank*.json")} == {
        "data-rank0.json",
        "data-rank1.json",
    }
    assert (run / "config.json").is_file() and (run / "model").is_dir()


@pytest.mark.slurm
def test_preempted_job_checkpoints_requeues_and_resumes(
    slurm_cluster: LocalSlurm, tiny_sd: Path, shards: Path, tmp_path: Path
) -> None:
    # 16 steps: run 1 is signalled after its first step and stops within a step or two (~0.6 s
    # each here), well before the end; run 2 trains the rest.
    log, run, max_steps = tmp_path / "job.out", tmp_path / "run", 16
    job = submit(slurm_cluster, log, train_args(tiny_sd, shards, run, max_steps))

    # Preempt once training runs (a summary line), as Slurm's --signal=B:USR1@N would.
    try:
        seen = wait_for(lambda: summaries(output(log)), JOB_TIMEOUT, "a summary line", 0.2)
    except TimeoutError as error:
        pytest.fail(f"{error}\n{output(log)}\n{slurm_cluster.logs()}")
    slurm_cluster.run(["scancel", "--batch", "--signal=USR1", str(job)])
    # The requeued run's first line, before asking for the final state (a requeue passes
    # through states of its own).
    try:
        wait_for(lambda: "SLURM_RESTART_COUNT=1" in output(log), JOB_TIMEOUT, "the requeued run")
    except TimeoutError as error:
        pytest.fail(f"{error}; job {slurm_cluster.job(job)}\n{output(log)}")
    fields = finished(slurm_cluster, job, log)
    text = output(log)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", text
    assert fields["Restarts"] == "1", fields

    # Run 1 stopped early on the signal with status 3 and requeued itself; run 2 ran after it.
    first, marker, second = text.partition("SLURM_RESTART_COUNT=1")
    assert marker, f"the job did not run again:\n{text}"
    assert "SLURM_RESTART_COUNT=0" in first and "SIGUSR1" in first
    assert f"training exited with status {PREEMPTED_EXIT_CODE}" in first
    assert "requeueing job" in first
    stopped_at = summaries(first)[-1][0]
    assert seen[-1][0] <= stopped_at < max_steps, first
    assert f"checkpoint-{stopped_at}" in first

    # Run 2 resumed from the checkpoint run 1 saved at that step and trained to the end.
    resumed = re.search(r"resumed from \S*checkpoint-(\d+)", second)
    assert resumed and int(resumed.group(1)) == stopped_at, second
    rest = range(stopped_at + 1, max_steps + 1)
    assert summaries(second) == [(step, max_steps, 2) for step in rest], second
    assert "training exited with status 0" in second
    assert (run / "checkpoints" / f"checkpoint-{max_steps}").is_dir()


@pytest.mark.slurm
def test_one_accelerate_launcher_per_node_trains_two_ranks(
    slurm_cluster: LocalSlurm, tiny_sd: Path, shards: Path, tmp_path: Path
) -> None:
    log, run = tmp_path / "job.out", tmp_path / "run"
    # One task per node with both cores; accelerate launch starts 2 processes in it.
    options = ["--ntasks-per-node=1", "--cpus-per-task=2", f"--output={log}"]
    env = {"LAUNCH": "node", "PROCS_PER_NODE": "2"}
    args = train_args(tiny_sd, shards, run, max_steps=2)
    job = slurm_cluster.sbatch(SBATCH, options, args, cwd=REPO, env=env)
    fields = finished(slurm_cluster, job, log)
    text = output(log)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", text
    assert "starting 1 launchers x 2 processes, world size 2" in text
    assert summaries(text) == [(1, 2, 2), (2, 2, 2)], text
    checkpoint = run / "checkpoints" / "checkpoint-2"
    assert {p.name for p in checkpoint.glob("data-rank*.json")} == {
        "data-rank0.json",
        "data-rank1.json",
    }


@pytest.mark.slurm
def test_config_error_fails_the_job_without_requeue(
    slurm_cluster: LocalSlurm, tiny_sd: Path, shards: Path, tmp_path: Path
) -> None:
    log = tmp_path / "job.out"
    args = [*train_args(tiny_sd, shards, tmp_path / "run", max_steps=2), "train.max_stepz=3"]
    fields = finished(slurm_cluster, submit(slurm_cluster, log, args), log)
    text = output(log)
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "2:0", text
    assert fields["Restarts"] == "0" and "requeue" not in text, text
    assert "unknown key 'train.max_stepz'" in text
    assert not summaries(text)


# The script's own checks, before any srun: plain bash with the variables sbatch would set.


def run_script(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run the batch script as bash would inside a job with ``env``."""
    base = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7"}
    return subprocess.run(
        ["bash", str(SBATCH), *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["configs/missing.yaml"], {}, "config file not found: configs/missing.yaml"),
        (["configs/tiny_cpu.yaml"], {"LAUNCH": "mpi"}, "LAUNCH must be task or node, not 'mpi'"),
        (["configs/tiny_cpu.yaml"], {"PYTHON": "no-such-python"}, "PYTHON=no-such-python"),
        (["configs/tiny_cpu.yaml"], {"SLURM_JOB_ID": ""}, "not inside a Slurm job"),
        (["configs/tiny_cpu.yaml"], {"TRAIN_SCRIPT": "nope.py"}, "nope.py not found in"),
    ],
)
def test_script_rejects_bad_input_before_launching(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = run_script(args, **env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "starting" not in done.stdout
