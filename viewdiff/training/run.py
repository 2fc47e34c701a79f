"""A set-up training run (``Run``): its parts, the unwrapped model, the noise schedule, the data
streams and the counters that a checkpoint records; and how the run is checkpointed (all ranks)
and exported for inference (main rank).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from viewdiff.config import Config
from viewdiff.model import MultiViewUNet
from viewdiff.prior.camera_record import CameraRecord
from viewdiff.training.checkpoints import TrainingState, checkpoint_path, save_checkpoint
from viewdiff.training.data_segments import SegmentedBatches
from viewdiff.training.export import export_model
from viewdiff.training.step import TrainingParts


@dataclass
class Run:
    """A set-up run: its parts, the unwrapped model, the schedule, the data and the counters."""

    config: Config
    parts: TrainingParts
    model: MultiViewUNet
    scheduler: DDPMScheduler
    data: SegmentedBatches
    prior: SegmentedBatches | None  # the prior preservation batches (train.prior_shards)
    state: TrainingState
    cameras: CameraRecord  # the training cameras seen so far (main rank), for the export
    saved_step: int | None = None  # the step of this run's last checkpoint
    skipped_before: int = 0  # on the main rank: samples skipped before the resumed checkpoint

    def skipped_samples(self) -> int:
        """This rank's share of the run's skipped-sample count (summed over ranks: the count)."""
        return self.skipped_before + self.data.skipped


def save(run: Run, step: int) -> Path:
    """Checkpoint the run after ``step`` steps (all ranks), unless it just did."""
    accelerator = run.parts.accelerator
    if run.saved_step == step:  # a stop request right after a periodic checkpoint
        return checkpoint_path(run.config.train.output_dir, step)
    skipped = accelerator.reduce(torch.tensor(run.skipped_samples()), reduction="sum")
    run.state = dataclasses.replace(
        run.state, step=step, skipped_samples=int(skipped), cameras=run.cameras.to_dict()
    )
    position = {
        "rank": accelerator.process_index,
        "step": step,
        "segment": run.data.segment,
        "skipped_samples": run.data.skipped,
        "last_step_samples": run.data.last_samples,
    }
    ema = run.parts.ema.state_dict() if run.parts.ema is not None else None
    path = save_checkpoint(accelerator, run.config, run.state, position, ema)
    run.saved_step = step
    return path


def export(run: Run, step: int) -> None:
    """Write the inference export (main rank)."""
    if run.parts.accelerator.is_main_process:
        export_model(run.model, run.config, run.scheduler, step, run.parts.ema, run.cameras)
