"""Everything a run needs, checked before any compute: a problem exits 2 with a message naming it.

``check_inputs`` reads files only (no model is built, no batch decoded): the training values of
the config, the shards, the base pipeline folder and the checkpoint to resume from.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path

import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

from viewdiff.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    prior_data,
    read_config_json,
)
from viewdiff.data.stream import shard_urls
from viewdiff.output_folders import check_output_folder
from viewdiff.training.checkpoints import (
    checkpoints_dir,
    complete_checkpoints,
    read_training_state,
    resolve_resume,
)
from viewdiff.training.optim import learning_rate_schedule

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# How the model runs, not what it is: may differ between a checkpoint and the run resuming it.
RUNTIME_MODEL_FIELDS = ("attention_backend", "projection_checkpointing", "density_noise")
ACCELERATE_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # pipe:, http://, s3://, gs://, ...


class InputError(ValueError):
    """A config value or input (shards, base model, checkpoint) that a run cannot start from."""


def check_train_values(config: Config) -> None:
    """Refuse training values that cannot run here, naming the key: the config's own checks
    (``Config.check``, as every load runs them), then what depends on this machine (mixed
    precision, trackers, bitsandbytes) and on diffusers (the learning-rate schedule)."""
    train = config.train
    try:
        config.check()
    except ConfigError as error:
        raise InputError(str(error)) from None
    precision = chosen_precision(train)
    if precision not in ("no", "fp16", "bf16"):
        raise InputError(
            f"accelerate's mixed_precision={precision} is not supported here: no, fp16 or bf16 "
            "(set train.mixed_precision, or `accelerate launch --mixed_precision`)"
        )
    if precision == "fp16" and not torch.cuda.is_available():
        where = "train.mixed_precision" if train.mixed_precision else "accelerate's mixed_precision"
        raise InputError(f"{where}=fp16 needs a CUDA device; use bf16 or no on a CPU")
    check_schedule_values(config)
    check_trackers(train.report_to)
    if train.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise InputError("train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes)")


def chosen_precision(train: TrainConfig) -> str:
    """The mixed precision the run will use: train.mixed_precision, else accelerate's (the
    ``ACCELERATE_MIXED_PRECISION`` that `accelerate launch` sets from its flag or config)."""
    return train.mixed_precision or os.environ.get(ACCELERATE_PRECISION_ENV, "no").lower()


def check_schedule_values(config: Config) -> None:
    """The learning-rate schedule builds (diffusers' own checks, e.g. of piecewise rules)."""
    train = config.train
    try:
        learning_rate_schedule(train)(0)
    except (ValueError, IndexError) as error:
        raise InputError(f"train.lr_scheduler={train.lr_scheduler}: {error}") from None


def check_trackers(names: tuple[str, ...]) -> None:
    """Every tracker in train.report_to is one accelerate knows and is installed here
    (accelerate would drop a missing one silently)."""
    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name == "all":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            known = ", ".join(["all", *LOGGER_TYPE_TO_CLASS])
            raise InputError(f"train.report_to: unknown tracker {name!r}; known: {known}")
        if name not in available:
            raise InputError(f"train.report_to: {name} is not installed here (pip install {name})")


def check_shards(config: Config) -> None:
    """The shards of ``data.shards`` (and of ``train.prior_shards``, when set) exist: a folder
    with a complete manifest, or the files."""
    check_shard_source("data.shards", config.data)
    if config.train.prior_shards:
        try:
            check_shard_source("train.prior_shards", prior_data(config))
        except InputError as error:
            raise InputError(
                f"{error} (write the prior set with data/make_prior_set.py, or set "
                "train.prior_shards='' to train without prior preservation)"
            ) from None


def check_shard_source(key: str, data: DataConfig) -> None:
    """The shards of ``data.shards`` exist; errors name the config ``key``."""
    try:
        urls = shard_urls(data.shards, data.image_size, data.categories, data.crop)
    except (OSError, ValueError) as error:
        raise InputError(f"{key}={data.shards!r}: {error}") from None
    # Local files (of a manifest, a path or a brace pattern) must exist; URLs are the loader's.
    missing = [url for url in urls if not _URL_SCHEME.match(url) and not Path(url).is_file()]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    if missing and Path(data.shards).is_dir():
        raise InputError(
            f"{key}={data.shards!r}: its manifest lists {Path(missing[0]).name}, which is "
            f"not there{more}"
        )
    if missing:
        raise InputError(f"{key}={data.shards!r}: no such shard folder or file: {missing[0]}{more}")


def check_base_model(model: ModelConfig) -> None:
    """A local base pipeline folder has every part; a hub id is checked when it loads."""
    name = model.pretrained_model
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [part for part in PIPELINE_PARTS if not (path / part).is_dir()]
        if missing:
            raise InputError(
                f"model.pretrained_model={name!r}: not a Stable Diffusion pipeline folder: "
                f"no {missing[0]}/ in it (expected {', '.join(p + '/' for p in PIPELINE_PARTS)})"
            )
        if not (path / "unet" / "config.json").is_file():
            raise InputError(f"model.pretrained_model={name!r}: no unet/config.json in it")
        return
    # A hub id is 'owner/name'; anything else that is not a folder is a mistyped path.
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise InputError(
            f"model.pretrained_model={name!r}: no such pipeline folder (and not a hub id "
            "'owner/name'); build a tiny one with `python -m viewdiff.tiny DIR`"
        )


def check_resume_config(checkpoint: Path, config: Config) -> None:
    """The checkpoint was trained with the same model and mode as this run."""
    saved_path = checkpoint / "config.json"
    try:
        saved = read_config_json(saved_path)
    except ConfigError as error:
        raise InputError(str(error)) from None
    runtime = {name: getattr(config.model, name) for name in RUNTIME_MODEL_FIELDS}
    differs = [
        f"model.{f.name}: checkpoint {getattr(saved.model, f.name)!r}, "
        f"now {getattr(config.model, f.name)!r}"
        for f in dataclasses.fields(ModelConfig)
        if f.name not in runtime and getattr(saved.model, f.name) != getattr(config.model, f.name)
    ]
    if saved.train.mode != config.train.mode:
        differs.append(f"train.mode: checkpoint {saved.train.mode!r}, now {config.train.mode!r}")
    if differs:
        raise InputError(f"{saved_path}: cannot resume with another model: {'; '.join(differs)}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        saved_world = read_training_state(checkpoint).world_size
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{checkpoint}: cannot read its training state: {error}") from None
    if saved_world != world_size and not config.train.allow_world_size_change:
        raise InputError(
            f"{checkpoint} was written by {saved_world} rank(s), this run has {world_size}: use "
            "another train.output_dir, or train.allow_world_size_change=true to resume it anyway"
        )


def check_output_dir(output_dir: str | Path) -> None:
    """``train.output_dir`` is a folder or can be made one, and can be written (creates
    nothing: a run refused for another input leaves no folder behind)."""
    try:
        check_output_folder(Path(output_dir), "train.output_dir")
    except ValueError as error:
        raise InputError(str(error)) from None


def check_inputs(config: Config) -> Path | None:
    """Check a run's inputs; returns the checkpoint to resume from (None: start fresh)."""
    check_output_dir(config.train.output_dir)
    check_train_values(config)
    check_shards(config)
    check_base_model(config.model)
    try:
        checkpoint = resolve_resume(config.train.resume, config.train.output_dir)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None
    if config.train.resume is None and complete_checkpoints(config.train.output_dir):
        # A fresh run among an earlier run's checkpoints would later resume from theirs.
        raise InputError(
            f"train.resume=null but {checkpoints_dir(config.train.output_dir)} holds checkpoints "
            "of an earlier run: resume it (train.resume=latest), or use another train.output_dir"
        )
    if checkpoint is not None:
        check_resume_config(checkpoint, config)
    return checkpoint
