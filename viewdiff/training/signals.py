"""Preemption: SIGTERM or SIGUSR1 -> finish the step, checkpoint, exit ``PREEMPTED_EXIT_CODE``.

Slurm (``--signal``, ``scancel``, time limits) and Kubernetes send SIGTERM or SIGUSR1 before
killing a job. The handler only records the signal. At every step boundary the ranks all-reduce
the flag, so a signal that reached any rank stops every rank after the same step; they save a
checkpoint there and the process exits with status 3 ("preempted: checkpoint saved, requeue
me"); ``train.resume=latest`` continues from it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

import torch
from accelerate import Accelerator

from viewdiff.training.early_signals import PREEMPTED_EXIT_CODE as PREEMPTED_EXIT_CODE
from viewdiff.training.early_signals import STOP_SIGNAL_NAMES

STOP_SIGNALS = tuple(getattr(signal, name) for name in STOP_SIGNAL_NAMES if hasattr(signal, name))

# What ``signal.signal`` returns and takes: a function, SIG_DFL / SIG_IGN, or None (a handler
# installed outside Python).
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StopRequest:
    """Records SIGTERM/SIGUSR1 while installed (a context manager restoring the old handlers)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, SignalHandler] = {}

    def __enter__(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember, do nothing else (the loop stops at the step boundary)."""
        self.received = signal.Signals(signum).name

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any rank received a stop signal (a collective: every rank must call it)."""
        flag = torch.tensor(float(self.received is not None), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
