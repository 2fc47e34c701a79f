"""A real single-host Slurm cluster for tests: munge, slurmctld and slurmd, run as root.

Debian's packages (slurmctld, slurmd, slurm-client, munge) run a one-node cluster whose state,
logs, sockets and keys all live in one temporary folder. Nothing starts by itself on these
machines (no systemd), so the daemons are started here by hand and stopped by their PID files.

The daemons listen on two free ports picked at start (not Slurm's 6817/6818), so a stray
cluster elsewhere on the machine does not collide with this one. Every client command needs
``SLURM_CONF``: use :attr:`LocalSlurm.env` (also for jobs, which inherit the submitter's
environment, PATH included).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
OWNER_FILE = "owner.pid"  # the process id of the test session that started the cluster
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
# Job states after which a job neither runs nor comes back by itself.
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def missing_requirement() -> str | None:
    """Why a local cluster cannot be had here (a skip reason), or None when it can."""
    if all(shutil.which(name) for name in PROGRAMS):
        return None if os.geteuid() == 0 else "the Slurm daemons run as root here; not root"
    if os.geteuid() != 0:
        return "Slurm is not installed and installing it needs root (apt-get)"
    if shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it"
    return None


def install_packages(timeout: float = 300.0) -> None:
    """Install Debian's Slurm and munge packages unless their programs are all present."""
    if all(shutil.which(name) for name in PROGRAMS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what`` after."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


def parse_scontrol(text: str) -> dict[str, str]:
    """The ``Key=Value`` fields of one ``scontrol show -o`` record."""
    fields = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    return fields


class LocalSlurm:
    """One Slurm node ``localhost`` with one partition ``debug``, all state under ``root``."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = root
        self.cpus = cpus
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files = {
            "slurmd": root / "slurmd.pid",
            "slurmctld": root / "slurmctld.pid",
            "munged": root / "munge" / "munged.pid",
        }

    # Starting.

    def _write_munge_key(self) -> Path:
        """A private munge key and a socket folder munged accepts (0711, not 0700)."""
        munge = self.root / "munge"
        munge.mkdir(mode=0o711, exist_ok=True)
        munge.chmod(0o711)
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        return key

    def _write_conf(self) -> None:
        """slurm.conf of a one-node cluster with fast scheduling, requeue and kill timings."""
        root, mem_mb = self.root, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
        for folder in ("state", "spool", "log"):
            (root / folder).mkdir(exist_ok=True)
        lines = [
            "ClusterName=local",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire=5 (default 120) lets a requeued job start again after seconds.
            f"AuthInfo=socket={root / 'munge' / 'munge.sock'},cred_expire=5",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "KillWait=5",
            "MailProg=/bin/true",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={self.pid_files['slurmctld']}",
            f"SlurmdPidFile={self.pid_files['slurmd']}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            # The node as declared here, not as detected (CPUs may be advertised oversubscribed).
            "SlurmdParameters=config_overrides",
            f"NodeName=localhost CPUs={self.cpus} RealMemory={int(mem_mb * 0.8)} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _daemon(self, command: Sequence[str]) -> None:
        """Start a daemon that forks itself into the background; raise with its log on failure."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed to start:\n{done.stdout}{done.stderr}")

    def start(self, timeout: float = 60.0) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        key = self._write_munge_key()
        self._write_conf()
        munge = self.root / "munge"
        self._daemon(
            [
                "munged",
                f"--socket={munge / 'munge.sock'}",
                f"--key-file={key}",
                f"--pid-file={self.pid_files['munged']}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ]
        )
        self._daemon(["slurmctld", "-f", str(self.conf)])
        self._daemon(["slurmd", "-f", str(self.conf), "-N", "localhost"])
        try:
            wait_for(self._node_idle, timeout, "the Slurm node to become idle")
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{self.logs()}") from None

    def _node_idle(self) -> bool:
        done = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
        return done.returncode == 0 and done.stdout.strip() == "idle"

    # Using.

    def run(
        self, command: Sequence[str], check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster; raise with its output if it fails."""
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        return done

    def sbatch(
        self,
        script: Path,
        options: Sequence[str],
        args: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Submit ``script`` with sbatch ``options``, its ``args`` and extra ``env``; the job id."""
        done = subprocess.run(
            ["sbatch", "--parsable", *options, str(script), *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed:\n{done.stdout}{done.stderr}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """The fields of ``scontrol show job`` (JobState, Restarts, ExitCode, ...)."""
        done = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        return parse_scontrol(done.stdout) if done.returncode == 0 else {}

    def wait_for_state(self, job_id: int, states: set[str], timeout: float) -> dict[str, str]:
        """Poll the job until its JobState is one of ``states``; its fields then."""

        def reached() -> dict[str, str] | None:
            fields = self.job(job_id)
            return fields if fields.get("JobState") in states else None

        try:
            return wait_for(reached, timeout, f"job {job_id} to reach {sorted(states)}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; it is {self.job(job_id)}") from None

    def logs(self) -> str:
        """The tails of the daemons' logs, for failure messages."""
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-20:]))
        return "\n".join(parts)

    # Stopping.

    def _job_pids(self) -> list[int]:
        """Process ids of job steps that still run on the node (``scontrol listpids``)."""
        done = self.run(["scontrol", "listpids"], check=False)
        pids = []
        for line in done.stdout.splitlines()[1:]:
            first = line.split()[0] if line.split() else ""
            if first.isdigit():
                pids.append(int(first))
        return pids

    def cancel_all(self, timeout: float = 30.0) -> None:
        """Cancel every job and wait until none is left on the node."""
        if daemon_pid(self.pid_files["slurmctld"], self.root) is None:
            return
        self.run(["scancel", "--partition=debug"], check=False)

        def no_jobs() -> bool:
            done = self.run(["squeue", "-h", "-o", "%i"], check=False)
            return done.returncode != 0 or not done.stdout.strip()

        with contextlib.suppress(TimeoutError):
            wait_for(no_jobs, timeout, "cancelled jobs to end")
        # Whatever outlived the cancel (it should not) is ended by its own process id.
        for pid in self._job_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Cancel all jobs, then end each daemon by the process id in its PID file."""
        try:
            self.cancel_all()
        finally:
            pids = []
            for name in ("slurmd", "slurmctld", "munged"):
                pid = daemon_pid(self.pid_files[name], self.root)
                pids += [pid] if pid is not None else []
            stop_processes(pids)


def daemon_pid(pid_file: Path, root: Path) -> int | None:
    """The process id in ``pid_file`` if that process still runs with ``root`` in its command
    line (a stale PID file may name an unrelated process by now)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return None
    return pid if str(root) in command else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_processes(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGTERM ``pids``; SIGKILL those still alive after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not any(map(_alive, pids)), timeout, "the daemons to exit", interval=0.1)
    for pid in filter(_alive, pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_orphaned_clusters(parent: Path, prefix: str) -> None:
    """Stop and remove the clusters under ``parent/prefix*`` whose owning process has died
    (a test session killed before its teardown); those of running sessions are left alone."""
    for root in parent.glob(f"{prefix}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            LocalSlurm(root).stop()
            shutil.rmtree(root, ignore_errors=True)
