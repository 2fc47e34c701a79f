"""The inference export ``<output_dir>/model/``: what inference loads, and nothing else.

    multiview.safetensors, multiview.json, unet/ | unet_lora/
                       ``save_multiview_unet`` (the UNet weights by mode: full, lora, none)
    config.json        the resolved config of the run
    scheduler/         the training noise schedule (betas, zero terminal SNR, prediction type)
    camera_distribution.json
                       radius, elevation and field of view of the training cameras
                       (``viewdiff.training.camera_record``), for score distillation
    base_model.json    the base pipeline it was trained from (``viewdiff.training.base_record``:
                       the hub id + revision, or a local folder's absolute path, its path
                       relative to the export and a fingerprint of its files, so that the
                       export finds it from any working directory, moved with its base or
                       alone), the step, and whether the weights are the EMA

With ``train.use_ema`` the EMA weights are exported. Written into ``model.tmp/`` and swapped
in by renames: ``model/`` is always a complete export, the previous one until the new one is
complete (a crash between the two renames leaves ``model.old/``, restored at the next start).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from diffusers import DDPMScheduler

from viewdiff.config import Config, save_config
from viewdiff.model import MultiViewUNet, save_multiview_unet
from viewdiff.training.base_record import BASE_MODEL_FILE, base_record
from viewdiff.training.camera_record import CameraRecord, write_camera_distribution
from viewdiff.training.checkpoints import sync_folder
from viewdiff.training.ema import EMA
from viewdiff.training.modes import EXPORT_UNET_WEIGHTS

EXPORT = "model"


def export_path(output_dir: str | Path) -> Path:
    """The export folder of a run."""
    return Path(output_dir) / EXPORT


def recover_export(output_dir: str | Path) -> None:
    """Undo what an interrupted export left: restore model.old/ if model/ is missing."""
    final = export_path(output_dir)
    old, tmp = final.with_name(EXPORT + ".old"), final.with_name(EXPORT + ".tmp")
    if old.is_dir() and not final.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def export_model(
    model: MultiViewUNet,
    config: Config,
    noise_scheduler: DDPMScheduler,
    step: int,
    ema: EMA | None = None,
    cameras: CameraRecord | None = None,
) -> Path:
    """Write the inference export of ``model`` (main rank only); returns ``model/``."""
    final = export_path(config.train.output_dir)
    old, tmp = final.with_name(EXPORT + ".old"), final.with_name(EXPORT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet_weights = EXPORT_UNET_WEIGHTS[config.train.mode]
    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
        save_multiview_unet(model, tmp, unet_weights=unet_weights)
    save_config(config, tmp / "config.json")
    noise_scheduler.save_pretrained(tmp / "scheduler")
    if cameras is not None and cameras.count:
        write_camera_distribution(tmp, cameras)
    base = base_record(config.model.pretrained_model, config.model.revision, final, unet_weights)
    base.update(step=step, ema=ema is not None)
    (tmp / BASE_MODEL_FILE).write_text(json.dumps(base, indent=2) + "\n")
    sync_folder(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
