"""One run per folder: the lock file, its stale takeover, and a second train.py refused."""

import json
import os
import socket
import subprocess
import sys

import pytest

from viewdiff.run_lock import LOCK_FILE, FolderInUse, RunLock, process_alive


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(FolderInUse, match=rf"in use by another run \(pid {os.getpid()} on "):
            RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with RunLock(tmp_path / "other", enabled=False):  # other ranks do not lock
        assert not (tmp_path / "other" / LOCK_FILE).exists()


def test_a_dead_runs_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(gone.stdout)
    assert not process_alive(pid)
    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"host": socket.gethostname(), "pid": pid, "started": 0.0})
    )
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {pid}" in capsys.readouterr().err
    (tmp_path / LOCK_FILE).write_text("{half a lock")  # a crash while writing it
    with RunLock(tmp_path):
        pass
    assert "taking over an unreadable lock" in capsys.readouterr().err


def test_another_hosts_lock_is_not_taken(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0}))
    with pytest.raises(FolderInUse, match="pid 1 on elsewhere"):
        RunLock(tmp_path).acquire()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch, capsys):
    lock = {"host": "dead-node", "pid": 1, "started": 0.0, "slurm_job": "4242"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(lock))
    monkeypatch.setenv("SLURM_JOB_ID", "4241")  # another job: refused
    with pytest.raises(FolderInUse, match="pid 1 on dead-node"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same job, requeued on another node
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["slurm_job"] == "4242"
    assert "taking over the lock of pid 1" in capsys.readouterr().err
