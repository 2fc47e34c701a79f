"""Training checkpoints: ``<output_dir>/checkpoints/checkpoint-<step>/``, atomic, pruned, resumable.

A checkpoint holds

    optimizer.bin, random_states_<rank>.pkl   accelerate's ``save_state`` (scaler.pt with fp16);
                                              it loads them with torch.load(weights_only=True)
    trainable.safetensors  the trained weights and the added layers' buffers; the frozen base
                           UNet is not copied: it is reloaded from model.pretrained_model
    ema.safetensors        the moving average of the trained weights (train.use_ema)
    data-rank<r>.json      each rank's data position and the samples of its last step
    config.json            the resolved config of the run that wrote it
    training_state.json    step, data-segment length and counters; written last

Atomic: every rank writes into ``checkpoint-<step>.tmp/``; after a barrier the main rank swaps
it in as ``checkpoint-<step>/`` (``viewdiff.atomic_folder.swap_in``: fsync, renames inside one
folder, atomic on POSIX filesystems; with several nodes, ``output_dir`` must be on a shared
filesystem). A crash while writing leaves only the ``.tmp`` folder, which never counts as a
checkpoint and is removed at the next start; a crash while replacing a checkpoint of the same
step (a run resumed from an earlier one) leaves ``checkpoint-<step>.old/``, put back then if the
new one is not in place. A checkpoint is complete when it is named ``checkpoint-<step>`` and
holds training_state.json.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import save_file
from torch import Tensor, nn

from viewdiff.atomic_folder import OLD_SUFFIX, STAGING_SUFFIX, recover_folder, staging_path, swap_in
from viewdiff.config import Config, save_config
from viewdiff.disk_full import DiskFullError, is_disk_full
from viewdiff.model.persistence import check_weights
from viewdiff.weights_files import folder_damage, read_safetensors

CHECKPOINTS = "checkpoints"
PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
WEIGHTS_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FORMAT = "viewdiff.training_state/1"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint needs besides weights and optimizer to continue exactly."""

    step: int
    """Optimiser steps done."""
    seed: int
    """train.seed of the run."""
    segment_steps: int
    """Steps per data segment (see ``data_segments``): the loader is reseeded at their starts."""
    world_size: int
    """Ranks of the run (the data streams depend on it)."""
    num_workers: int
    """DataLoader workers per rank (the order of batches depends on it)."""
    skipped_samples: int = 0
    """Corrupt samples skipped by the loaders so far, summed over ranks."""
    nan_skipped_steps: int = 0
    """Steps skipped for a NaN/inf loss (train.nan_policy=skip)."""
    cameras: dict | None = None
    """The main rank's record of the training cameras so far (``CameraRecord.to_dict``)."""


def checkpoints_dir(output_dir: str | Path) -> Path:
    """The folder of a run's training checkpoints."""
    return Path(output_dir) / CHECKPOINTS


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """The folder of the checkpoint after ``step`` steps."""
    return checkpoints_dir(output_dir) / f"{PREFIX}{step}"


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint ``train.resume`` names: None, 'latest' (None if there is none; the newest
    readable one, saying which damaged ones it passed over), or a path (refused if damaged)."""
    if resume is None:
        return None
    if resume == "latest":
        found = complete_checkpoints(output_dir)
        for _, path in reversed(found):
            damage = folder_damage(path)
            if damage is None:
                return path
            print(f"train.py: warning: {path} is damaged ({damage}); resuming from the "
                  "checkpoint before it", file=sys.stderr)  # fmt: skip
        if found:
            raise ValueError(
                f"train.resume=latest: every checkpoint in {checkpoints_dir(output_dir)} is "
                "damaged (see the warnings); restore one, or start over in another "
                "train.output_dir"
            )
        return None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume={resume!r}: no such checkpoint folder")
    if not (path / STATE_FILE).is_file():
        raise ValueError(
            f"train.resume={resume!r}: not a complete checkpoint (no {STATE_FILE}; "
            f"an interrupted save leaves a {STAGING_SUFFIX} folder)"
        )
    damage = folder_damage(path)
    if damage is not None:
        raise ValueError(f"train.resume={resume!r}: damaged checkpoint: {damage}")
    return path


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete what interrupted saves left behind (``.tmp`` folders, folders without a state) and
    put back a checkpoint whose replacement was cut between its renames (``.old``)."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        interrupted = path.name.endswith(STAGING_SUFFIX)
        stateless = bool(_NAME.match(path.name)) and not (path / STATE_FILE).is_file()
        if path.is_dir() and (interrupted or stateless):
            shutil.rmtree(path)
            removed.append(path)
    for old in sorted(folder.glob(f"{PREFIX}*{OLD_SUFFIX}")):
        final = old.with_name(old.name.removesuffix(OLD_SUFFIX))
        if final.exists():  # the new one is in place: the old one is superseded
            removed.append(old)
        recover_folder(final)
    return removed


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints; returns what was deleted."""
    old = [path for _, path in complete_checkpoints(output_dir)][: -max(keep, 1)]
    for path in old:
        shutil.rmtree(path)
    return old


def read_training_state(checkpoint: str | Path) -> TrainingState:
    """The training state of a checkpoint folder."""
    path = Path(checkpoint) / STATE_FILE
    values = json.loads(path.read_text())
    if values.pop("format", None) != STATE_FORMAT:
        raise ValueError(f"{path}: not a {STATE_FORMAT} file")
    return TrainingState(**values)


def _write_json(path: Path, values: dict) -> None:
    """Write a JSON file."""
    path.write_text(json.dumps(values, indent=2) + "\n")


# The trained weights: only what trains (and the added layers' buffers), as safetensors.


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """State dict entries that a checkpoint must hold: trained parameters, added layers."""
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        name: value.detach().contiguous()
        for name, value in model.state_dict().items()
        if name in trained or not name.startswith("unet.")
    }


class TrainableWeightsHooks:
    """accelerate save/load hooks: the model goes to trainable.safetensors (only what trains)."""

    def __init__(self, model: nn.Module, is_main_process: bool) -> None:
        self.model = model  # unwrapped
        self.is_main_process = is_main_process

    def save(self, models: list, weights: list, output_dir: str) -> None:
        """Write the trained weights ourselves and leave accelerate nothing to write."""
        weights.clear()
        if self.is_main_process:
            save_file(trainable_state_dict(self.model), Path(output_dir) / WEIGHTS_FILE)

    def load(self, models: list, input_dir: str) -> None:
        """Load the trained weights, checked against the model, and keep accelerate from it."""
        models.clear()
        path = Path(input_dir) / WEIGHTS_FILE
        weights = read_safetensors(path)
        check_weights(trainable_state_dict(self.model), weights, str(path))
        self.model.load_state_dict(weights, strict=False)


def register_weight_hooks(accelerator: Accelerator, model: nn.Module) -> None:
    """Make accelerator.save_state/load_state store only the trained weights, as safetensors."""
    hooks = TrainableWeightsHooks(model, accelerator.is_main_process)
    accelerator.register_save_state_pre_hook(hooks.save)
    accelerator.register_load_state_pre_hook(hooks.load)


# Saving and loading.


def folder_bytes(folder: Path) -> int:
    """The size of every file under ``folder``."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def check_free_space(output_dir: str | Path) -> None:
    """A DiskFullError unless the disk has room for one more checkpoint of the last one's size
    (with 10% to spare); nothing to compare with before the first checkpoint."""
    found = complete_checkpoints(output_dir)
    if not found:
        return
    folder = checkpoints_dir(output_dir)
    needed = folder_bytes(found[-1][1]) * 1.1
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"disk full: {free / 2**20:.0f} MB free, a checkpoint needs ~{needed / 2**20:.0f} MB, "
            f"in {folder}; the last complete checkpoint is {found[-1][1]}"
        )


def save_checkpoint(
    accelerator: Accelerator,
    config: Config,
    state: TrainingState,
    data_position: dict,
    ema_state: dict[str, Tensor] | None = None,
) -> Path:
    """Write checkpoint-<step>/ atomically (all ranks call this); returns its folder.

    A full disk (found before writing, or while writing) raises a DiskFullError naming the
    space and the last complete checkpoint; the partial folder is removed."""
    final = checkpoint_path(config.train.output_dir, state.step)
    tmp = staging_path(final)  # checkpoint-<step>.tmp/
    if accelerator.is_main_process:
        check_free_space(config.train.output_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        _write_json(tmp / f"data-rank{accelerator.process_index}.json", data_position)
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        latest = latest_checkpoint(config.train.output_dir)
        free = shutil.disk_usage(tmp.parent).free
        raise DiskFullError(
            f"disk full while writing {tmp} ({free / 2**20:.0f} MB free); the last complete "
            f"checkpoint is {latest or 'none'}"
        ) from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema_state is not None:
            save_file(ema_state, tmp / EMA_FILE)
        save_config(config, tmp / "config.json")
        _write_json(tmp / STATE_FILE, {"format": STATE_FORMAT, **dataclasses.asdict(state)})
        # A checkpoint-<step>/ already there was left by a run resumed from an earlier
        # checkpoint: superseded, it is replaced.
        swap_in(tmp, final)
        prune_checkpoints(config.train.output_dir, config.train.checkpoints_keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> TrainingState:
    """Restore model, optimizer and RNG states (all ranks); returns the training state."""
    accelerator.load_state(str(checkpoint))
    return read_training_state(checkpoint)


def load_ema_state(checkpoint: Path) -> dict[str, Tensor] | None:
    """The EMA weights of a checkpoint, or None when it has none."""
    path = Path(checkpoint) / EMA_FILE
    return read_safetensors(path) if path.is_file() else None
