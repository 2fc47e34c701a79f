"""Load the inference export of a training run (``<output_dir>/model/``), and nothing else.

The export (``viewdiff.prior.export``) holds the multi-view UNet (``multiview.json``,
``multiview.safetensors`` and the fine-tuned ``unet/`` or a peft ``unet_lora/`` or nothing),
the run's resolved ``config.json``, the training noise schedule ``scheduler/`` and
``base_model.json``, the base pipeline (local folder or hub id + revision) whose tokenizer, text
encoder and VAE (and, for LoRA / new-layers exports, UNet) it was trained from. Only JSON and
safetensors are read; a training checkpoint (``checkpoints/checkpoint-<step>/``) is refused.

``read_export`` checks the folder without loading any weight, so that a command can refuse a
wrong path before it spends time; ``load_export`` builds the models on the caller's device. Both
find the base from any working directory (``viewdiff.prior.base_record.locate_base``: beside
the export, at the absolute path of training, checked against the recorded fingerprint), or take
it from ``base`` (``--base DIR``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from viewdiff.config import Config, read_config_json
from viewdiff.model import MultiViewUNet, load_multiview_unet
from viewdiff.model.attention import AttentionBackend
from viewdiff.model.persistence import CONFIG_FILE, UNET_DIR, UNET_LORA_DIR, WEIGHTS_FILE
from viewdiff.prior.base_record import BASE_MODEL_FILE, locate_base

EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE, "config.json", BASE_MODEL_FILE, "scheduler")


@dataclass(frozen=True)
class ExportInfo:
    """What an export says about itself, read without loading weights."""

    path: Path
    config: Config
    pretrained_model: str
    revision: str | None
    step: int
    ema: bool
    unet_weights: str


@dataclass
class PriorModels:
    """A multi-view UNet with the frozen parts of its base pipeline: what sampling runs."""

    model: MultiViewUNet
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]

    @property
    def device(self) -> torch.device:
        """Where the models are."""
        return self.vae.device


@dataclass
class MultiViewPrior(PriorModels):
    """A trained multi-view prior loaded from its export, ready to sample."""

    info: ExportInfo


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or a ValueError naming the file."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return document


def read_export(path: str | Path, base: str | Path | None = None) -> ExportInfo:
    """Check that ``path`` is an inference export, read its config and find its base pipeline
    (``base``: this folder instead); loads no weights."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a folder (an export is <output_dir>/model/)")
    missing = [name for name in EXPORT_FILES if not (path / name).exists()]
    if missing:
        hint = ""
        if (path / "model" / CONFIG_FILE).is_file():
            hint = f"; this looks like a run folder: use {path / 'model'}"
        elif (path / "trainable.safetensors").exists() or path.name.startswith("checkpoint-"):
            hint = "; this is a training checkpoint: inference loads the run's model/ export"
        raise ValueError(
            f"{path} is not an inference export (<output_dir>/model/): missing "
            f"{', '.join(missing)}{hint}"
        )
    config = read_config_json(path / "config.json")
    record = _read_json(path / BASE_MODEL_FILE)
    meta = _read_json(path / CONFIG_FILE)
    unet_weights = str(meta.get("unet_weights"))  # checked when the UNet loads
    unet_folder = {"full": UNET_DIR, "lora": UNET_LORA_DIR}.get(unet_weights)
    if unet_folder is not None and not (path / unet_folder).is_dir():
        raise ValueError(f"{path} is an incomplete export: {unet_folder}/ is missing")
    if not isinstance(record.get("pretrained_model"), str):
        raise ValueError(f"{path / BASE_MODEL_FILE}: no 'pretrained_model' (the base pipeline)")
    return ExportInfo(
        path=path,
        config=config,
        pretrained_model=locate_base(path, record, base),
        revision=record.get("revision"),
        step=int(record.get("step", -1)),
        ema=bool(record.get("ema", False)),
        unet_weights=unet_weights,
    )


def chosen_device(name: str | None) -> str:
    """``--device``, or cuda when there is one, else cpu; a ValueError if CUDA is asked for and
    absent (before any model is built)."""
    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here")
    return device


class _Pretrained(Protocol):
    """A diffusers or transformers class: what ``_from_base`` loads."""

    def from_pretrained(self, name: str, *, subfolder: str, revision: str | None) -> Any: ...


def _from_base(cls: _Pretrained, info: ExportInfo, part: str) -> Any:
    """One part of the base pipeline, with an error that names the export and the part."""
    # A revision names a hub commit; a local folder (found, or given as --base) has none.
    revision = None if Path(info.pretrained_model).is_dir() else info.revision
    try:
        return cls.from_pretrained(info.pretrained_model, subfolder=part, revision=revision)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{info.path / BASE_MODEL_FILE}: cannot load the base model's {part} from "
            f"{info.pretrained_model!r}: {error}"
        ) from None


def load_export(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attention_backend: AttentionBackend = "sdpa",
    base: str | Path | None = None,
) -> MultiViewPrior:
    """The export's multi-view UNet, VAE, text encoder and tokenizer on ``device`` in ``dtype``
    (the base's parts from ``base`` if given)."""
    info = read_export(path, base)
    # How the model runs here, not how it trained: no activation checkpointing at inference.
    expected = dataclasses.replace(
        info.config.model, attention_backend=attention_backend, projection_checkpointing=False
    )
    base_unet = None
    if info.unet_weights != "full":
        base_unet = _from_base(UNet2DConditionModel, info, "unet")
    model = load_multiview_unet(info.path, base_unet, expected_config=expected)
    vae = _from_base(AutoencoderKL, info, "vae")
    text_encoder = _from_base(CLIPTextModel, info, "text_encoder")
    tokenizer = _from_base(CLIPTokenizer, info, "tokenizer")
    scheduler_config = dict(DDPMScheduler.load_config(info.path / "scheduler"))
    for module in (model, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
        if next(module.parameters()).dtype != dtype:  # diffusers warns at any cast, even a no-op
            module.to(dtype=dtype)
    return MultiViewPrior(model, vae, text_encoder, tokenizer, scheduler_config, info)
