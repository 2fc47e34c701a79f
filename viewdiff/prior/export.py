"""The inference export ``<output_dir>/model/``: what inference loads, and nothing else.

    multiview.safetensors, multiview.json, unet/ | unet_lora/
                       ``save_multiview_unet`` (the UNet weights by mode: full, lora, none)
    config.json        the resolved config of the run
    scheduler/         the training noise schedule (betas, zero terminal SNR, prediction type)
    camera_distribution.json
                       radius, elevation and field of view of the training cameras
                       (``viewdiff.prior.camera_record``), for score distillation
    base_model.json    the base pipeline it was trained from (``viewdiff.prior.base_record``:
                       the hub id + revision, or a local folder's absolute path, its path
                       relative to the export and a fingerprint of its files, so that the
                       export finds it from any working directory, moved with its base or
                       alone), the step, and whether the weights are the EMA

``write_export`` writes these files into a folder; training's ``viewdiff.training.export`` puts
them in place atomically (with the EMA weights swapped in under ``train.use_ema``).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import DDPMScheduler

from viewdiff.config import Config, save_config
from viewdiff.model import MultiViewUNet, save_multiview_unet
from viewdiff.model.persistence import UNetWeights
from viewdiff.prior.base_record import BASE_MODEL_FILE, base_record
from viewdiff.prior.camera_record import CameraRecord, write_camera_distribution

EXPORT = "model"
"""The export's folder in a run folder: ``<output_dir>/model/``."""

# The export's UNet weights per train.mode (viewdiff.model.persistence.save_multiview_unet).
EXPORT_UNET_WEIGHTS: dict[str, UNetWeights] = {"full": "full", "lora": "lora", "new_layers": "none"}


def export_path(output_dir: str | Path) -> Path:
    """The export folder of a run."""
    return Path(output_dir) / EXPORT


def write_export(
    folder: Path,
    model: MultiViewUNet,
    config: Config,
    noise_scheduler: DDPMScheduler,
    step: int,
    ema: bool = False,
    cameras: CameraRecord | None = None,
    final: Path | None = None,
) -> None:
    """Write the export files of ``model`` into ``folder``; ``final``: where it will live (the
    base's relative path is recorded from there; default ``folder``)."""
    unet_weights = EXPORT_UNET_WEIGHTS[config.train.mode]
    save_multiview_unet(model, folder, unet_weights=unet_weights)
    save_config(config, folder / "config.json")
    noise_scheduler.save_pretrained(folder / "scheduler")
    if cameras is not None and cameras.count:
        write_camera_distribution(folder, cameras)
    where = folder if final is None else final
    base = base_record(config.model.pretrained_model, config.model.revision, where, unet_weights)
    base.update(step=step, ema=ema)
    (folder / BASE_MODEL_FILE).write_text(json.dumps(base, indent=2) + "\n")
