"""Stop signals from a run's first line: importing this module makes SIGTERM and SIGUSR1 exit 3.

``train.py`` imports it before torch, so that a signal during the heavy imports or the preflight
ends the process with ``PREEMPTED_EXIT_CODE`` (nothing to save yet: Slurm requeues it) rather
than a plain death by signal. From model building on, ``viewdiff.training.signals.StopRequest``
takes over and defers the signal to the first step boundary, where a checkpoint is saved; when it
is done, these handlers are back. Only the standard library is imported here.
"""

from __future__ import annotations

import signal
from types import FrameType

PREEMPTED_EXIT_CODE = 3
STOP_SIGNAL_NAMES = ("SIGTERM", "SIGUSR1")


def exit_preempted(signum: int, frame: FrameType | None) -> None:
    """Signal handler: leave now with the preempted status (nothing has been computed yet)."""
    raise SystemExit(PREEMPTED_EXIT_CODE)


def install_early_exit() -> None:
    """Make every stop signal exit with status 3."""
    for name in STOP_SIGNAL_NAMES:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), exit_preempted)


install_early_exit()
