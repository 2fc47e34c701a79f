"""The inference export of a run, written atomically: ``<output_dir>/model/`` (its files:
``viewdiff.prior.export``).

With ``train.use_ema`` the EMA weights are exported. Written through
``viewdiff.atomic_folder`` (into ``model.tmp/``, swapped in by renames): ``model/`` is always a
complete export, the previous one until the new one is complete (a crash between the two
renames leaves ``model.old/``, restored at the next start).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from diffusers import DDPMScheduler

from viewdiff.atomic_folder import atomic_folder, recover_folder
from viewdiff.config import Config
from viewdiff.model import MultiViewUNet
from viewdiff.prior.camera_record import CameraRecord
from viewdiff.prior.export import export_path, write_export
from viewdiff.training.ema import EMA


def recover_export(output_dir: str | Path) -> None:
    """Undo what an interrupted export left: restore model.old/ if model/ is missing."""
    recover_folder(export_path(output_dir))


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
    weights = ema.swapped_in() if ema is not None else contextlib.nullcontext()
    with atomic_folder(final) as staging, weights:
        write_export(staging, model, config, noise_scheduler, step, ema is not None, cameras, final)
    return final
