"""The inference export of a run, written atomically: ``<output_dir>/model/`` (its files:
``viewdiff.prior.export``).

With ``train.use_ema`` the EMA weights are exported. Written into ``model.tmp/`` and swapped
in by renames: ``model/`` is always a complete export, the previous one until the new one is
complete (a crash between the two renames leaves ``model.old/``, restored at the next start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from diffusers import DDPMScheduler

from viewdiff.atomic_folder import sync_folder
from viewdiff.config import Config
from viewdiff.model import MultiViewUNet
from viewdiff.prior.camera_record import CameraRecord
from viewdiff.prior.export import EXPORT, export_path, write_export
from viewdiff.training.ema import EMA


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
    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
        write_export(tmp, model, config, noise_scheduler, step, ema is not None, cameras, final)
    sync_folder(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
