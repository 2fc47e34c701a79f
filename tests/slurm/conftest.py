"""The local Slurm cluster fixture: installed if missing, started per module, always stopped."""

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_slurm import LocalSlurm, install_packages, missing_requirement, stop_orphaned_clusters

PREFIX = "viewdiff-slurm-"  # the clusters' folders in the temp folder
# One cluster on the machine at a time: two would hand out the same job ids, so the same
# rendezvous ports (slurm/train.sbatch: 15000 + job id), and their jobs would meet.
LOCK = Path(tempfile.gettempdir()) / "viewdiff-slurm.lock"


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[LocalSlurm]:
    """A running one-node cluster whose jobs use this interpreter; stopped even on failure."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    install_packages()
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process's cluster: wait for its end
        yield from _cluster()


def _cluster() -> Iterator[LocalSlurm]:
    """Start a cluster, yield it, stop and remove it."""
    stop_orphaned_clusters(Path(tempfile.gettempdir()), PREFIX)
    # Not under pytest's tmp folder: munged wants every folder above its socket searchable by all
    # (pytest's are 0700).
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    root.chmod(0o711)
    cluster = LocalSlurm(root, cpus=2)
    # Jobs inherit the submitter's environment: the test's venv comes first on their PATH.
    python_bin = str(Path(sys.executable).parent)
    cluster.env["PATH"] = python_bin + os.pathsep + cluster.env.get("PATH", "")
    cluster.env["PYTHON"] = sys.executable
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
