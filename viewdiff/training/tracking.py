"""What a run reports: tensorboard scalars (accelerate's tracker) and one summary line per interval.

Every ``train.log_every`` steps the main rank logs, averaged over the interval: ``loss``,
``grad_norm``, ``lr/<group>``, ``views_per_s`` (all ranks' views over the main rank's step
time), ``data_wait`` (fraction of the step time spent waiting for batches, main rank),
``skipped_samples`` (corrupt samples so far, summed over ranks), ``nan_skipped_steps`` and, on
CUDA, ``gpu_memory_gib`` (peak). The summary line reads

    step 10/30 | loss 0.1234 | grad 0.52 | lr 1.00e-04 | 41.2 views/s | data 12% | skipped 0 samples
    | 2 ranks

(one line; NaN-skipped steps and GPU memory appear when there are any / on CUDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from viewdiff.training.step import StepOutcome

TENSORBOARD_PROJECT = "train"  # events land in <output_dir>/logs/train/


@dataclass
class IntervalMeter:
    """Sums over the steps of one log interval (checkpoints and validation not counted)."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    prior_losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    views: int = 0
    step_seconds: float = 0.0
    data_seconds: float = 0.0

    def add(self, outcome: StepOutcome, step_seconds: float, data_seconds: float) -> None:
        """Count one step that took ``step_seconds``, ``data_seconds`` of them waiting for data."""
        self.steps += 1
        if not outcome.skipped:
            self.losses.append(outcome.loss)
            self.grad_norms.append(outcome.grad_norm)
            if outcome.prior_loss is not None:
                self.prior_losses.append(outcome.prior_loss)
        self.views += outcome.views
        self.step_seconds += step_seconds
        self.data_seconds += data_seconds

    def reset(self) -> None:
        """Start the next interval."""
        self.steps, self.losses, self.grad_norms, self.views = 0, [], [], 0
        self.prior_losses = []
        self.step_seconds = self.data_seconds = 0.0


def _mean(values: list[float]) -> float:
    """Mean, NaN for none."""
    return sum(values) / len(values) if values else math.nan


def interval_scalars(
    accelerator: Accelerator,
    meter: IntervalMeter,
    learning_rates: dict[str, float],
    skipped_samples: int,
    nan_skipped_steps: int,
) -> dict[str, float]:
    """The interval's scalars (a collective: every rank calls it; the main rank's values)."""
    seconds = max(meter.step_seconds, 1e-9)
    counts = torch.tensor([meter.views, skipped_samples], device=accelerator.device)
    views, skipped = accelerator.reduce(counts, reduction="sum").tolist()
    scalars = {
        "loss": _mean(meter.losses),
        "grad_norm": _mean(meter.grad_norms),
        "views_per_s": views / seconds,
        "data_wait": meter.data_seconds / seconds,
        "skipped_samples": float(skipped),
        "nan_skipped_steps": float(nan_skipped_steps),
        **{f"lr/{name}": lr for name, lr in learning_rates.items()},
    }
    if meter.prior_losses:  # prior preservation's own diffusion loss, unweighted
        scalars["prior_loss"] = _mean(meter.prior_losses)
    if accelerator.device.type == "cuda":
        scalars["gpu_memory_gib"] = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
    return scalars


def summary_line(step: int, max_steps: int, scalars: dict[str, float], ranks: int) -> str:
    """One line per log interval: step, loss, grad norm, lr, throughput, waits, skips, ranks."""
    lr = next((value for key, value in scalars.items() if key.startswith("lr/")), math.nan)
    parts = [
        f"step {step}/{max_steps}",
        f"loss {scalars['loss']:.4f}",
        *([f"prior loss {scalars['prior_loss']:.4f}"] if "prior_loss" in scalars else []),
        f"grad {scalars['grad_norm']:.3g}",
        f"lr {lr:.2e}",
        f"{scalars['views_per_s']:.1f} views/s",
        f"data {scalars['data_wait']:.0%}",
        f"skipped {int(scalars['skipped_samples'])} samples",
    ]
    if scalars["nan_skipped_steps"]:
        parts.append(f"{int(scalars['nan_skipped_steps'])} NaN steps skipped")
    if "gpu_memory_gib" in scalars:
        parts.append(f"{scalars['gpu_memory_gib']:.1f} GiB")
    parts.append(f"{ranks} rank{'s' if ranks != 1 else ''}")
    return " | ".join(parts)


def tensorboard_writer(accelerator: Accelerator) -> Any:
    """The tensorboard SummaryWriter of the main rank (None elsewhere, or without tensorboard
    in train.report_to: then images and text go only to the trackers that take them)."""
    if not accelerator.is_main_process:
        return None
    if "tensorboard" not in [tracker.name for tracker in accelerator.trackers]:
        return None
    return accelerator.get_tracker("tensorboard", unwrap=True)
