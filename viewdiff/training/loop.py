"""The training loop: optimiser steps from the run's step to ``train.max_steps``, with the
interval's scalars and summary line, a checkpoint on a stop request (all ranks agree; exit 3),
and checkpoints, exports and validation grids at their intervals.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from tqdm import tqdm

from viewdiff.training.optim import learning_rates
from viewdiff.training.run import Run, export, save
from viewdiff.training.signals import PREEMPTED_EXIT_CODE, StopRequest
from viewdiff.training.step import train_step
from viewdiff.training.tracking import IntervalMeter, interval_scalars, summary_line
from viewdiff.training.validation import run_validation


def log_interval(run: Run, step: int, meter: IntervalMeter, progress: tqdm) -> None:
    """Tensorboard scalars and the summary line of the interval ending at ``step``."""
    accelerator = run.parts.accelerator
    rates = learning_rates(run.parts.optimizer)
    scalars = interval_scalars(
        accelerator, meter, rates, run.skipped_samples(), run.state.nan_skipped_steps
    )
    accelerator.log(scalars, step=step)
    if accelerator.is_main_process:
        line = summary_line(step, run.config.train.max_steps, scalars, accelerator.num_processes)
        progress.write(line, file=sys.stdout)
    meter.reset()


def run_loop(run: Run, stop: StopRequest) -> int:
    """Train from the run's step to train.max_steps; returns the exit status."""
    accelerator, train = run.parts.accelerator, run.config.train
    step, meter = run.state.step, IntervalMeter()
    main_rank = accelerator.is_main_process
    progress = tqdm(total=train.max_steps, initial=step, desc="train", disable=not main_rank)
    while step < train.max_steps:
        # One optimiser step: G micro-batches, forward, backward, clip, update.
        run.data.wait_seconds, started = 0.0, time.perf_counter()
        batches = run.data.step_batches(step)
        for batch in batches:
            run.cameras.add(batch["K"], batch["w2c"], run.config.data.image_size)
        prior_batches = run.prior.step_batches(step) if run.prior is not None else None
        outcome = train_step(run.parts, batches, step, prior_batches)
        step += 1
        if outcome.skipped:
            skipped_steps = run.state.nan_skipped_steps + 1
            run.state = dataclasses.replace(run.state, nan_skipped_steps=skipped_steps)
        meter.add(outcome, time.perf_counter() - started, run.data.wait_seconds)
        progress.update()
        if step % train.log_every == 0 or step == train.max_steps:
            log_interval(run, step, meter, progress)
        # Stop request on any rank: all stop after this step, with a checkpoint (exit 3).
        if stop.agreed(accelerator):
            path = save(run, step)
            if main_rank:
                received = stop.received or "a signal on another rank"
                progress.write(f"stop requested ({received}): checkpoint {path}", file=sys.stdout)
            return PREEMPTED_EXIT_CODE
        # Checkpoint, export and validation at their intervals.
        if step % train.checkpoint_every == 0 or step == train.max_steps:
            save(run, step)
        if train.export_every and step % train.export_every == 0 and step < train.max_steps:
            export(run, step)
        if train.validate_every and step % train.validate_every == 0:
            scheduler_config = dict(run.scheduler.config)
            parts = run.parts
            run_validation(
                accelerator, run.model, parts.base, scheduler_config, run.config, step, parts.ema
            )
    progress.close()
    # Export: the inference model after the last step.
    export(run, step)
    accelerator.wait_for_everyone()
    return 0
