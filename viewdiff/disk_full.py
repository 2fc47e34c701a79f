"""A full disk, told apart from other write errors and named with what is left intact.

Every checkpoint writer (training's, and the scene checkpoints of SDS, TrAME and fit) raises
``DiskFullError`` when its disk fills: the message says how much space is free and which
complete checkpoint is still there, and the commands end with exit status 1 and that one line.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class DiskFullError(OSError):
    """A checkpoint that does not fit on its disk; the last complete checkpoint is intact."""


def is_disk_full(error: BaseException) -> bool:
    """Whether a write failed for lack of space (ENOSPC, or torch's zip writer's
    'unexpected pos' when the disk fills under it)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, RuntimeError) and "unexpected pos" in str(error)


def disk_full_error(writing: Path, last: Path | None) -> DiskFullError:
    """The error for a write of ``writing`` that filled the disk, ``last`` the intact one."""
    existing = Path(writing)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    return DiskFullError(
        f"disk full while writing {writing} ({free / 2**20:.0f} MB free); the last complete "
        f"checkpoint is {last or 'none'}"
    )
