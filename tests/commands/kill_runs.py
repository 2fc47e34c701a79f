"""What the kill tests share: a command in a subprocess of its own, SIGKILLed at a moment the
test chooses (a checkpoint reached, a file written, a line printed), then resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TIMEOUT_S = 600  # each run takes seconds to a minute when quiet; a loaded CI machine gets 5x+


def start(
    *argv: str, script: Path = REPO / "infer.py", log: Path | None = None
) -> subprocess.Popen:
    """``script argv`` in a process group of its own (a kill takes its children too); its
    stderr to ``log`` (which a test can watch while it runs) or to a pipe."""
    stderr = subprocess.PIPE if log is None else log.open("wb")
    return subprocess.Popen([sys.executable, str(script), *argv], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=stderr,
                            start_new_session=True)  # fmt: skip


def errors(process: subprocess.Popen) -> str:
    """The end of what the run wrote to stderr."""
    if process.stderr is None or process.stderr.closed:
        return ""
    if process.stderr.mode == "wb":  # a log file: read it back
        process.stderr.close()
        return Path(process.stderr.name).read_text(errors="replace")[-2000:]
    return process.stderr.read().decode(errors="replace")[-2000:]


def finish(process: subprocess.Popen) -> None:
    """Wait for a run to end well."""
    process.wait(timeout=TIMEOUT_S)
    assert process.returncode == 0, errors(process)
    errors(process)  # closes the log or the pipe


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """SIGKILL the run (its whole group) as soon as ``ready()``; fail if it ends first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"ended before {what}: {errors(process)}")
        assert time.monotonic() < deadline, f"no {what} in {TIMEOUT_S} s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    errors(process)  # closes the log or the pipe


def json_value(path: Path, key: str) -> int:
    """``path``'s ``key`` (-1 while the file is missing or half written)."""
    try:
        return int(json.loads(path.read_text())[key])
    except (OSError, ValueError, KeyError):
        return -1


def progress(log: Path, bar: str) -> int:
    """How far the tqdm bar ``bar`` has gone in a run's stderr ``log`` (-1: not started)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return -1
    counts = re.findall(rf"{re.escape(bar)}:\s+\d+%\|[^|]*\|\s*(\d+)/", text)
    return int(counts[-1]) if counts else -1


def kill_after_checkpoint(process: subprocess.Popen, state: Path, step_key: str, step: int) -> int:
    """SIGKILL the run once its checkpoint's ``state`` JSON reached ``step``; the step saved."""
    kill_when(process, lambda: json_value(state, step_key) >= step, f"checkpoint of step {step}")
    return json_value(state, step_key)
