"""The pieces of a training run's set-up, in the order ``viewdiff.commands.train.set_up`` calls
them: the accelerator (ranks, precision, accumulation, trackers), the run folder, the frozen base
pipeline with the training noise schedule, the resumed training state, the EMA and this rank's
data streams.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers import DDPMScheduler

from viewdiff.config import Config, TrainConfig, config_to_yaml, prior_data
from viewdiff.config import save_config as write_config
from viewdiff.diffusion import noise_scheduler, resolve_prediction_type
from viewdiff.model import MultiViewUNet
from viewdiff.training.base_pipeline import BasePipeline, freeze_encoders, load_base_pipeline
from viewdiff.training.checkpoints import (
    TrainingState,
    load_checkpoint,
    load_ema_state,
    remove_incomplete,
)
from viewdiff.training.data_segments import SegmentedBatches, prior_seed
from viewdiff.training.ema import EMA
from viewdiff.training.export import recover_export
from viewdiff.training.tracking import TENSORBOARD_PROJECT, tensorboard_writer
from viewdiff.training.training_model import COMPUTE_DTYPES, trainable_named_parameters


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


def compute_dtype(train: TrainConfig) -> torch.dtype:
    """The dtype frozen weights are held and computed in, from the run's chosen precision."""
    if train.mixed_precision is None:
        raise ValueError(
            "train.mixed_precision is None: set it with with_chosen_precision(config, accelerator)"
        )
    return COMPUTE_DTYPES[train.mixed_precision]


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
    freeze_encoders(base, device, compute_dtype(train))
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


def data_streams(
    config: Config, state: TrainingState, accelerator: Accelerator
) -> tuple[SegmentedBatches, SegmentedBatches | None]:
    """This rank's batches, and the prior preservation batches (train.prior_shards) or None."""
    train = config.train
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
    return data, prior
