"""Atomic folders: a writer killed before any rename, removal or fsync leaves, after recovery,
exactly the old folder or exactly the new one; and a wrong swap order is caught."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from viewdiff.atomic_folder import atomic_folder, old_path, recover_folder, staging_path, swap_in

ROOT = Path(__file__).resolve().parents[1]
OLD = {"a.txt": "old a", "b.txt": "old b", "only-old.txt": "old"}
NEW = {"a.txt": "new a", "b.txt": "new b", "sub/c.txt": "new c"}

# The child writes NEW over OLD; the kill_at-th call to a patched function SIGKILLs it just
# before the call runs. os.unlink / os.rmdir are the steps inside shutil.rmtree: a kill there
# leaves a half-removed folder.
WRITER = """
import json, os, shutil, signal, sys
from pathlib import Path

import viewdiff.atomic_folder as atomic

final, kill_at, writer, swap = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
files = json.loads(sys.argv[5])
calls = 0


def killed_before(function):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)

    return call


def remove_then_rename(staging, final):  # wrong: between the two, no complete folder exists
    atomic.sync_folder(staging)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def write(folder):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


if swap == "remove_then_rename":
    atomic.swap_in = remove_then_rename
for module, name in [(os, "replace"), (os, "rename"), (os, "fsync"), (os, "unlink"),
                     (os, "rmdir"), (shutil, "rmtree")]:
    setattr(module, name, killed_before(getattr(module, name)))
if writer == "atomic_folder":
    with atomic.atomic_folder(final) as staging:
        write(staging)
else:  # the checkpoints' way: the staging folder written first, then swapped in
    staging = atomic.staging_path(final)
    staging.mkdir()
    write(staging)
    atomic.swap_in(staging, final)
"""


def write_files(folder: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path: text) under ``folder``."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def read_files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` as relative path: text (empty if there is no folder)."""
    return {
        path.relative_to(folder).as_posix(): path.read_text()
        for path in folder.rglob("*")
        if path.is_file()
    }


def kill_outcomes(tmp_path: Path, start: str, writer: str, swap: str) -> list[str]:
    """Kill the writer before its 1st, 2nd, ... call until it completes; what each kill left
    after ``recover_folder``: 'old', 'new' or 'broken', then 'done'."""
    outcomes = []
    for kill_at in range(1, 100):
        final = tmp_path / str(kill_at) / "folder"
        # 'cut': an earlier swap was killed between its renames, only folder.old/ is left
        write_files(final if start == "final" else old_path(final), OLD)
        arguments = [str(final), str(kill_at), writer, swap, json.dumps(NEW)]
        child = subprocess.run(
            [sys.executable, "-c", WRITER, *arguments], cwd=ROOT, capture_output=True, timeout=60
        )
        if child.returncode == 0:
            assert read_files(final) == NEW
            assert not staging_path(final).exists() and not old_path(final).exists()
            return [*outcomes, "done"]
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()
        recover_folder(final)
        assert not staging_path(final).exists() and not old_path(final).exists()
        found = read_files(final)
        outcomes.append("old" if found == OLD else "new" if found == NEW else "broken")
        with atomic_folder(final) as staging:  # and the next write goes through
            write_files(staging, NEW)
        assert read_files(final) == NEW
    raise AssertionError("the writer was still killed after 99 calls")


@pytest.mark.parametrize(
    ("start", "writer", "swap", "complete"),
    [
        ("final", "atomic_folder", "swap_in", True),
        ("cut", "swap_in", "swap_in", True),
        ("final", "atomic_folder", "remove_then_rename", False),
    ],
    ids=["atomic_folder", "swap_in-after-a-cut-swap", "wrong-order-is-caught"],
)
def test_a_kill_before_any_rename_removal_or_fsync_leaves_the_old_or_the_new_folder(
    tmp_path, start, writer, swap, complete
):
    outcomes = kill_outcomes(tmp_path, start, writer, swap)
    assert outcomes[-1] == "done" and len(outcomes) > 10  # every fsync and removal was a kill
    assert ("broken" not in outcomes) == complete, outcomes
    if complete:  # the kills fell before and after the switch
        assert {"old", "new"} <= set(outcomes), outcomes


def test_an_error_in_the_block_leaves_final_untouched_and_no_staging_folder(tmp_path):
    final = tmp_path / "folder"
    write_files(final, OLD)
    with pytest.raises(RuntimeError, match="cut"), atomic_folder(final) as staging:
        write_files(staging, NEW)
        raise RuntimeError("cut")
    assert read_files(final) == OLD
    assert not staging_path(final).exists() and not old_path(final).exists()


def test_a_swap_that_fails_between_its_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    final = tmp_path / "folder"
    write_files(final, OLD)
    replace = os.replace

    def fail_on_the_staging_rename(source, target):
        if Path(source) == staging_path(final):
            raise OSError("no space left")
        replace(source, target)

    monkeypatch.setattr(os, "replace", fail_on_the_staging_rename)
    with pytest.raises(OSError, match="no space"), atomic_folder(final) as staging:
        write_files(staging, NEW)
    assert read_files(final) == OLD
    assert not staging_path(final).exists() and not old_path(final).exists()


def test_a_stale_staging_folder_from_a_crash_is_removed(tmp_path):
    final = tmp_path / "folder"
    write_files(final, OLD)
    write_files(staging_path(final), {"a.txt": "half"})
    recover_folder(final)
    assert read_files(final) == OLD and not staging_path(final).exists()
    write_files(staging_path(final), {"a.txt": "half"})
    with atomic_folder(final) as staging:  # starts empty, not with the crash's files
        assert not any(staging.iterdir())
        write_files(staging, NEW)
    assert read_files(final) == NEW and not staging_path(final).exists()


def test_an_old_folder_without_final_is_restored(tmp_path):
    final = tmp_path / "folder"
    write_files(old_path(final), OLD)  # a swap cut between its two renames
    write_files(staging_path(final), NEW)  # complete, but never swapped in: not trusted
    recover_folder(final)
    assert read_files(final) == OLD
    assert not staging_path(final).exists() and not old_path(final).exists()
    write_files(old_path(final), {"a.txt": "older"})  # a removal cut after the swap
    recover_folder(final)
    assert read_files(final) == OLD and not old_path(final).exists()


def test_swap_in_puts_a_cut_swap_back_before_replacing(tmp_path):
    final = tmp_path / "folder"
    write_files(old_path(final), OLD)
    write_files(staging_path(final), NEW)
    swap_in(staging_path(final), final)
    assert read_files(final) == NEW
    assert not staging_path(final).exists() and not old_path(final).exists()
