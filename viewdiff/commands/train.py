"""Fine-tune a Stable Diffusion UNet into a multi-view model (ViewDiff, CVPR 2024).

    python train.py --config configs/tiny_cpu.yaml [key.sub=value ...]
    viewdiff-train --config co3d_sd21.yaml ...      # installed: the same, from any folder
    accelerate launch train.py --config configs/co3d_sd21.yaml
    torchrun --nproc_per_node 2 train.py --config configs/co3d_sd21.yaml
    python train.py --config configs/co3d_sd21.yaml --print-config   # resolved config, no run

What a launcher (slurm/) can rely on:

- Ranks. One process per rank; with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT
  in the environment (torchrun, ``accelerate launch``, or srun with them exported) the run is
  distributed through accelerate (NCCL on GPUs, gloo on CPUs). Every rank streams its own data.
  With several nodes, ``train.output_dir`` must be on a filesystem all nodes share.
- Resume. ``train.resume=latest`` (the default) continues from the newest complete checkpoint
  in ``<output_dir>/checkpoints/`` if there is one, else starts fresh; a path resumes from that
  checkpoint; ``null`` starts fresh (exit 2 if the folder holds an earlier run's checkpoints).
  A resumed run reaches the parameters an uninterrupted one would have (same ranks and data
  workers; see ``viewdiff.training.data_segments``).
- Stop. On SIGTERM or SIGUSR1 every rank finishes its current step, the ranks agree (an
  all-reduce of the flag) to stop after the same step, save a checkpoint there, and exit 3.
  A signal to any one rank is enough; one during the imports or the input checks exits 3 at
  once (nothing to save yet), one while the model is built stops at the first step. torchrun
  reports its workers' status 3 as a failure of its own (exit 1); launch one train.py per rank
  (e.g. srun with RANK=$SLURM_PROCID, ...) to see the 3 itself.
- Exit status. 0: finished (the export written); 1: a NaN/inf loss under
  ``train.nan_policy=stop`` (message on stderr, the last checkpoint is the last good one), or a
  disk too full for the next checkpoint ("disk full: N MB free, ...", the last complete one named);
  2: a config or input error (unknown key, missing shards, a base model folder without a
  unet/, a resume path that does not exist, a folder another run holds, ...), reported before
  any compute;
  3 (``PREEMPTED_EXIT_CODE``): preempted, checkpoint saved, requeue me.
- Output. ``<output_dir>/config.json`` (resolved config), ``logs/`` (tensorboard),
  ``checkpoints/checkpoint-<step>/`` (training state, atomic, the newest
  ``train.checkpoints_keep`` kept), ``model/`` (the inference export, every
  ``train.export_every`` steps and at the end), ``validation/step-<k>.png``, and ``run.lock``
  while the run lives (a second run on the folder exits 2 naming it). The main rank
  prints one summary line per ``train.log_every`` steps on stdout, e.g.
  ``step 10/30 | loss 0.1234 | grad 0.52 | lr 1.00e-04 | 41.2 views/s | data 12% |
  skipped 0 samples | 2 ranks``, and a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Before torch: from here on a stop signal during imports or preflight exits 3 (importing installs).
import viewdiff.training.early_signals  # noqa: F401

# isort: split
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from tqdm import tqdm

from viewdiff.commands.options import add_config_arguments, config_from_args
from viewdiff.config import Config, TrainConfig, config_to_yaml, prior_data
from viewdiff.config import save_config as write_config
from viewdiff.diffusion import noise_scheduler, resolve_prediction_type
from viewdiff.model import MultiViewUNet
from viewdiff.prior.camera_record import CameraRecord
from viewdiff.training.base_pipeline import BasePipeline, freeze_encoders, load_base_pipeline
from viewdiff.training.checkpoints import (
    DiskFullError,
    TrainingState,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_ema_state,
    register_weight_hooks,
    remove_incomplete,
    save_checkpoint,
)
from viewdiff.training.data_segments import SegmentedBatches, prior_seed
from viewdiff.training.ema import EMA
from viewdiff.training.export import export_model, recover_export
from viewdiff.training.optim import build_optimizer, learning_rates, parameter_groups
from viewdiff.training.preflight import InputError, check_inputs
from viewdiff.training.run_lock import RunLock, is_main_rank
from viewdiff.training.signals import PREEMPTED_EXIT_CODE, StopRequest
from viewdiff.training.step import NonFiniteLossError, TrainingParts, train_step
from viewdiff.training.tracking import (
    TENSORBOARD_PROJECT,
    IntervalMeter,
    interval_scalars,
    summary_line,
    tensorboard_writer,
)
from viewdiff.training.training_model import (
    COMPUTE_DTYPES,
    build_training_model,
    cast_frozen,
    trainable_named_parameters,
)
from viewdiff.training.validation import run_validation


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


def make_accelerator(config: Config) -> Accelerator:
    """The accelerator: ranks from the environment, precision (the config's, else accelerate's
    own), accumulation, the trackers of train.report_to."""
    output_dir = Path(config.train.output_dir)
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # on CPUs accelerate runs ranks (gloo) only when told
        mixed_precision=config.train.mixed_precision,  # None: accelerate launch's / config's
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        log_with=list(config.train.report_to) or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )


def with_chosen_precision(config: Config, accelerator: Accelerator) -> Config:
    """The config with the precision the accelerator runs in, as config.json records it."""
    train = dataclasses.replace(config.train, mixed_precision=accelerator.mixed_precision)
    return dataclasses.replace(config, train=train)


def start_run_folder(accelerator: Accelerator, config: Config) -> None:
    """Clean up interrupted saves, write config.json, open tensorboard (main rank writes)."""
    if accelerator.is_main_process:
        remove_incomplete(config.train.output_dir)
        recover_export(config.train.output_dir)
        Path(config.train.output_dir).mkdir(parents=True, exist_ok=True)
        write_config(config, Path(config.train.output_dir) / "config.json")
    accelerator.init_trackers(TENSORBOARD_PROJECT)
    writer = tensorboard_writer(accelerator)
    if writer is not None:
        writer.add_text("config", "```\n" + config_to_yaml(config) + "```")
    accelerator.wait_for_everyone()


def frozen_parts(config: Config, device: torch.device) -> tuple[BasePipeline, DDPMScheduler]:
    """The base pipeline with frozen VAE and text encoder on ``device``; the training schedule."""
    train = config.train
    base = load_base_pipeline(config.model)
    freeze_encoders(base, device, COMPUTE_DTYPES[train.mixed_precision])
    base_type = base.scheduler_config.get("prediction_type", "epsilon")
    prediction_type = resolve_prediction_type(train.prediction_type, base_type)
    return base, noise_scheduler(base.scheduler_config, train.zero_terminal_snr, prediction_type)


def resume(accelerator: Accelerator, checkpoint: Path | None, config: Config) -> TrainingState:
    """Load a checkpoint into the prepared model and optimizer (or start fresh): the state."""
    fresh = TrainingState(
        step=0,
        seed=config.train.seed,
        segment_steps=config.train.checkpoint_every,
        world_size=accelerator.num_processes,
        num_workers=config.data.num_workers,
    )
    if checkpoint is None:
        return fresh
    state = load_checkpoint(accelerator, checkpoint)
    if accelerator.is_main_process:
        print(f"resumed from {checkpoint} at step {state.step}", flush=True)
        if (state.world_size, state.num_workers) != (fresh.world_size, fresh.num_workers):
            print(
                f"warning: {checkpoint} was written by {state.world_size} ranks with "
                f"{state.num_workers} data workers each, this run has {fresh.world_size} and "
                f"{fresh.num_workers}: the data order differs from an uninterrupted run",
                file=sys.stderr,
            )
    return state


def make_ema(model: MultiViewUNet, train: TrainConfig, checkpoint: Path | None) -> EMA | None:
    """The EMA of the trained weights (train.use_ema), restored if the checkpoint has one."""
    if not train.use_ema:
        return None
    ema = EMA(trainable_named_parameters(model), train.ema_decay)
    saved = load_ema_state(checkpoint) if checkpoint is not None else None
    if saved is not None:
        ema.load_state_dict(saved, source=str(checkpoint))
    return ema


def set_up(config: Config, checkpoint: Path | None) -> Run:
    """Every part of a run, resumed from ``checkpoint`` when given."""
    train = config.train
    # Accelerator: ranks from the launcher's environment, precision, accumulation, tensorboard.
    accelerator = make_accelerator(config)
    config = with_chosen_precision(config, accelerator)
    train = config.train
    start_run_folder(accelerator, config)
    set_seed(train.seed)  # the added layers' initialisation
    # Base pipeline: frozen VAE and text encoder; the training noise schedule.
    base, scheduler = frozen_parts(config, accelerator.device)
    # Multi-view model, and what trains (train.mode); frozen weights in the compute dtype.
    model = build_training_model(base.unet, config.model, train.mode, train.gradient_checkpointing)
    if train.mixed_precision != "no":
        cast_frozen(model, COMPUTE_DTYPES[train.mixed_precision])
    model.to(accelerator.device).train()
    if train.compile_projection_layers:
        model.compile_projection_layers()
    # Optimizer: AdamW; the UNet and new layers at one learning rate, the renderer at its own.
    optimizer = build_optimizer(parameter_groups(model, train), train)
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    register_weight_hooks(accelerator, model)
    # Resume: weights, optimizer, RNG states, EMA, and the step (which is the data position).
    state = resume(accelerator, checkpoint, config)
    ema = make_ema(model, train, checkpoint)
    # Data: this rank's stream, reseeded at every data segment (exact resume).
    data = SegmentedBatches(
        config.data,
        train.batch_size,
        micro_batches=train.gradient_accumulation_steps,
        segment_steps=state.segment_steps,
        seed=train.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        show_progress=accelerator.is_main_process,
    )
    prior = None
    if train.prior_shards:  # the same segments, from a seed of their own
        prior = SegmentedBatches(
            prior_data(config),
            train.batch_size,
            micro_batches=train.gradient_accumulation_steps,
            segment_steps=state.segment_steps,
            seed=prior_seed(train.seed),
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
    parts = TrainingParts(
        accelerator=accelerator,
        model=prepared_model,
        optimizer=optimizer,
        base=base,
        alphas_cumprod=scheduler.alphas_cumprod,
        prediction_type=scheduler.config.prediction_type,
        train=train,
        ema=ema,
    )
    skipped_before = state.skipped_samples if accelerator.is_main_process else 0
    cameras = CameraRecord.from_dict(state.cameras)
    return Run(
        config, parts, model, scheduler, data, prior, state, cameras, skipped_before=skipped_before
    )


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


def train(config: Config, checkpoint: Path | None) -> int:
    """Set up the run and train it; returns the exit status."""
    # Stop signals are recorded from the start: one that arrives while the model loads stops the
    # run at its first step boundary, with a checkpoint, instead of killing it unsaved.
    with StopRequest() as stop, RunLock(config.train.output_dir, enabled=is_main_rank()):
        run = set_up(config, checkpoint)
        try:
            return run_loop(run, stop)
        except DiskFullError as error:
            print(f"train.py: {error}", file=sys.stderr)
            return 1
        except NonFiniteLossError as error:
            latest = latest_checkpoint(config.train.output_dir)
            print(f"train.py: {error}; last good checkpoint: {latest or 'none'}", file=sys.stderr)
            return 1
        finally:
            run.data.close()
            if run.prior is not None:
                run.prior.close()
            run.parts.accelerator.end_training()


def main(argv: list[str] | None = None) -> int:
    """Resolve the config, check the inputs, train; returns the exit status (see above)."""
    # Config: defaults <- preset <- key=value overrides (a bad one exits 2).
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    # Inputs: values, shards, base model, the checkpoint to resume: before any compute (exit 2).
    try:
        checkpoint = check_inputs(config)
        return train(config, checkpoint)
    except InputError as error:  # also a base pipeline that fails to load, still before compute
        parser.error(str(error))


def console_main() -> None:
    """The ``viewdiff-train`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
