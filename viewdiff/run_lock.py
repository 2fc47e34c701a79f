"""One run per folder: ``<folder>/run.lock`` names the run that holds the folder.

A second ``train.py`` on the same ``train.output_dir`` would clean up the first one's
half-written checkpoint as "incomplete" and write over its logs; two ``infer.py sds`` (or
``edit-scene``, ``fit``, ``invert``, ``python -m viewdiff.toy pretrain``) into one ``--out``
would resume from each other's checkpoints and write over each other's scenes. The main rank
(``RANK`` 0, or no launcher) creates the lock file atomically with its host, pid and start time
before it touches the folder, and removes it when the run ends. A lock whose process is gone
(same host, pid not running: a SIGKILL or a crash), or one left by an earlier run of the same
Slurm job (a requeue, maybe on another node), is taken over with a warning; a live one, or one
from another host (whose process cannot be checked from here), makes the second run exit 2,
naming the holder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

LOCK_FILE = "run.lock"


class FolderInUse(ValueError):
    """The folder is held by another run (or cannot be locked)."""


def is_main_rank() -> bool:
    """Whether this process is rank 0 of its launch (no launcher: yes)."""
    return int(os.environ.get("RANK", "0")) == 0


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_lock(path: Path) -> dict | None:
    """The holder recorded in a lock file, or None when it cannot be read."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and "host" in holder
    return holder if ok else None


class RunLock:
    """A context manager holding ``folder``'s lock (a no-op when ``enabled`` is False); errors
    name the folder as the option ``name`` that chose it, warnings come from ``program``."""

    def __init__(
        self,
        folder: str | Path,
        enabled: bool = True,
        name: str = "train.output_dir",
        program: str = "train.py",
    ) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.enabled, self.name, self.program = enabled, name, program
        self.held = False

    def __enter__(self) -> RunLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock, take over a stale one, or raise FolderInUse naming the holder."""
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FolderInUse(f"{self.name} {self.path.parent}: {error.strerror}") from None
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is not None and not self._stale(holder, me):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
                    raise FolderInUse(
                        f"{self.name} {self.path.parent} is in use by another run (pid "
                        f"{holder['pid']} on {holder['host']}, since {since}): wait for it, use "
                        f"another {self.name}, or delete {self.path} if that run is gone"
                    ) from None
                what = (
                    "an unreadable lock" if holder is None else f"the lock of pid {holder['pid']}"
                )
                print(f"{self.program}: warning: taking over {what} in {self.path.parent} "
                      "(its run is not running)", file=sys.stderr)  # fmt: skip
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as stream:
                json.dump(me, stream)
            self.held = True
            return
        raise FolderInUse(f"{self.path}: could not take the run lock (another run took it first)")

    @staticmethod
    def _stale(holder: dict, me: dict) -> bool:
        """Whether a lock's run is known to be gone: same host and its process not running, or
        an earlier incarnation of this very Slurm job (a requeue, maybe on another node)."""
        if me["slurm_job"] is not None and holder.get("slurm_job") == me["slurm_job"]:
            return True
        return holder["host"] == me["host"] and not process_alive(holder["pid"])

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            holder = read_lock(self.path)
            if holder is not None and holder["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


_HELD: list[RunLock] = []  # taken by lock_folder during the command now running


def lock_folder(folder: str | Path, program: str, name: str = "--out") -> RunLock:
    """Take ``folder``'s lock for the rest of the command (``released_locks`` gives it back):
    called by a command once its inputs are checked, before it writes into the folder."""
    lock = RunLock(folder, name=name, program=program)
    lock.acquire()
    _HELD.append(lock)
    return lock


@contextmanager
def released_locks() -> Iterator[None]:
    """Give back, when the block ends however it ends, every lock ``lock_folder`` took in it."""
    held = len(_HELD)
    try:
        yield
    finally:
        while len(_HELD) > held:
            _HELD.pop().release()
