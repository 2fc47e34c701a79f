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
import sys
from pathlib import Path

# Before torch: from here on a stop signal during imports or preflight exits 3 (importing installs).
import viewdiff.training.early_signals  # noqa: F401

# isort: split
from accelerate.utils import set_seed

from viewdiff.commands.options import add_config_arguments, config_from_args
from viewdiff.config import Config
from viewdiff.disk_full import DiskFullError
from viewdiff.prior.camera_record import CameraRecord
from viewdiff.reference_settings import annotate_yaml
from viewdiff.run_lock import FolderInUse, RunLock, is_main_rank
from viewdiff.training.checkpoints import latest_checkpoint, register_weight_hooks
from viewdiff.training.loop import run_loop
from viewdiff.training.optim import build_optimizer, parameter_groups
from viewdiff.training.preflight import InputError, check_inputs
from viewdiff.training.run import Run
from viewdiff.training.run_setup import (
    compute_dtype,
    data_streams,
    frozen_parts,
    make_accelerator,
    make_ema,
    resume,
    start_run_folder,
    with_chosen_precision,
)
from viewdiff.training.signals import StopRequest
from viewdiff.training.step import NonFiniteLossError, TrainingParts
from viewdiff.training.training_model import build_training_model, cast_frozen


def set_up(config: Config, checkpoint: Path | None) -> Run:
    """Every part of a run, resumed from ``checkpoint`` when given."""
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
        cast_frozen(model, compute_dtype(train))
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
    # Data: this rank's stream (and the prior batches), reseeded at every segment (exact resume).
    data, prior = data_streams(config, state, accelerator)
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


def train(config: Config, checkpoint: Path | None) -> int:
    """Set up the run and train it; returns the exit status."""
    # Stop signals are recorded from the start: one that arrives while the model loads stops the
    # run at its first step boundary, with a checkpoint, instead of killing it unsaved.
    with StopRequest() as stop, RunLock(config.train.output_dir, enabled=is_main_rank()):
        # Set up: accelerator, base pipeline, model, optimizer, resumed state, data.
        run = set_up(config, checkpoint)
        try:
            # Loop: steps to train.max_steps, checkpoints, exports, validation; the final export.
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
        print(annotate_yaml(config), end="")
        return 0
    # Inputs: values, shards, base model, the checkpoint to resume: before any compute (exit 2).
    try:
        checkpoint = check_inputs(config)
        return train(config, checkpoint)
    except (InputError, FolderInUse) as error:  # also a base pipeline that fails to load
        parser.error(str(error))


def console_main() -> None:
    """The ``viewdiff-train`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
