"""Write a folder so that a kill at any moment leaves the previous one or the new one, whole.

    with atomic_folder(final) as staging:   # final.tmp/, empty
        write files into staging
    # here final/ is the new folder; a kill before this line left the old final/ (or, inside
    # the swap, final.old/, which recover_folder puts back)

The swap: write into ``<name>.tmp/``, fsync its files and itself, rename the old folder to
``<name>.old/``, rename the staging folder in, fsync the parent, and only then remove the old
one. Between the two renames no ``final/`` exists: ``recover_folder`` (called by the next
``atomic_folder`` on the same path, and by readers before they look) restores ``<name>.old/``.
``tests/test_atomic_folder.py`` kills a writer before each rename, removal and fsync in turn.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"


def staging_path(final: Path) -> Path:
    """Where ``atomic_folder`` writes the new folder before it swaps it in."""
    return final.with_name(final.name + STAGING_SUFFIX)


def old_path(final: Path) -> Path:
    """Where the previous folder waits while the new one is renamed in."""
    return final.with_name(final.name + OLD_SUFFIX)


def sync_folder(folder: Path) -> None:
    """Flush a folder's files (recursively) and the folder to disk: a rename must publish data."""
    for path in folder.iterdir():
        if path.is_symlink():  # the link's target is not ours to flush (and may loop back)
            continue
        if path.is_dir():
            sync_folder(path)
        elif path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_parent(path: Path) -> None:
    """Flush a rename in ``path``'s parent folder to disk."""
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _restore_old(final: Path) -> None:
    """Put ``final.old/`` back where a swap was cut between its two renames (no ``final/``)."""
    old = old_path(final)
    if old.is_dir() and not final.exists():
        os.replace(old, final)
        _sync_parent(final)


def recover_folder(final: str | Path) -> None:
    """Undo what an interrupted swap left: ``final.old/`` back if ``final/`` is missing; the
    staging folder and a left-over ``final.old/`` removed."""
    final = Path(final)
    _restore_old(final)
    shutil.rmtree(old_path(final), ignore_errors=True)
    shutil.rmtree(staging_path(final), ignore_errors=True)


def swap_in(staging: Path, final: Path) -> None:
    """Put the complete folder ``staging`` in place of ``final`` (which may not exist)."""
    sync_folder(staging)
    old = old_path(final)
    _restore_old(final)  # else the removal below would delete the only complete copy
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    _sync_parent(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """An empty staging folder; swapped in for ``final`` when the block ends without error
    (on an error it is removed and ``final`` is the previous one, or the new one where the swap
    failed after renaming it in)."""
    final = Path(final)
    recover_folder(final)
    staging = staging_path(final)
    staging.mkdir(parents=True)
    try:
        yield staging
        swap_in(staging, final)
    except BaseException:
        recover_folder(final)  # a swap that failed between its renames puts the old one back
        raise
