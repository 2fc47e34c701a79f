"""One folder that holds an export and its base pipeline: copy it anywhere, load it from anywhere.

``write_self_contained(export, out)`` writes ``out/``:

    model_index.json      a diffusers pipeline index naming ``MultiViewPipeline`` (of
                          ``viewdiff.inference.pipeline``) and the class of every part
    vae/ text_encoder/ tokenizer/
                          copied from the base pipeline, file for file
    unet/                 the fine-tuned UNet of a ``full`` export, else the base's UNet (which
                          the LoRA of ``unet_lora/`` or the added layers sit on)
    scheduler/            the export's training noise schedule (not the base's)
    multiview.*, config.json, camera_distribution.json, unet_lora/, pytorch_lora_weights.*
                          the export's own files
    base_model.json       the base is the folder itself (``"."``), with the fingerprint of the
                          copied parts (the original's: they are the same bytes), the base it
                          came from kept for the record

It is still an inference export (``load_export``, ``infer.py --checkpoint``) and loads with
``MultiViewPipeline.from_pretrained(out)``. From the command line:

    python -m viewdiff.commands.self_contained --export runs/x/model --out shared/x-prior
 A hub base is copied from the local hub cache
(``huggingface_hub.snapshot_download``, which downloads only where the network is allowed).
Every file of a copied part is copied, other precisions included (variants): the copy loads
exactly as the base did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers

from viewdiff.atomic_folder import atomic_folder
from viewdiff.prior.base_record import (
    BASE_FROM_EXPORT_KEY,
    BASE_HASH_KEY,
    BASE_MODEL_FILE,
    BASE_PATH_KEY,
    base_fingerprint,
    base_parts,
)
from viewdiff.prior.load import ExportInfo, read_export

PIPELINE_INDEX = "model_index.json"


def pipeline_index() -> dict:
    """The diffusers model_index.json of a self-contained folder: class and part per component."""
    return {
        "_class_name": "MultiViewPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["viewdiff.model.multiview_unet", "MultiViewUNet"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _base_folder(info: ExportInfo, parts: tuple[str, ...]) -> Path:
    """The export's base as a local folder: the one found, or the hub id's cached snapshot."""
    if Path(info.pretrained_model).is_dir():
        return Path(info.pretrained_model)
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            info.pretrained_model,
            revision=info.revision,
            allow_patterns=[f"{part}/*" for part in parts],
        )
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{info.path / BASE_MODEL_FILE}: cannot get the base model {info.pretrained_model!r} "
            f"as a folder: {error}; pass a local copy with base="
        ) from None
    return Path(folder)


def write_self_contained(
    export: str | Path, out: str | Path, base: str | Path | None = None
) -> Path:
    """Write the export and its base pipeline's parts into ``out`` (a new folder); returns it."""
    info = read_export(export, base)
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out}: already exists; a self-contained folder is written anew")
    parts = base_parts(info.unet_weights)
    source = _base_folder(info, parts)
    hidden = shutil.ignore_patterns(".*")
    with atomic_folder(out) as staging:
        shutil.copytree(info.path, staging, ignore=hidden, dirs_exist_ok=True)
        for part in parts:
            if not (staging / part).exists():  # a self-contained export already has them
                shutil.copytree(source / part, staging / part, ignore=hidden)
        (staging / PIPELINE_INDEX).write_text(json.dumps(pipeline_index(), indent=2) + "\n")
        record = json.loads((info.path / BASE_MODEL_FILE).read_text())
        record.pop(BASE_PATH_KEY, None)  # nothing outside the folder: no path of this machine
        record[BASE_FROM_EXPORT_KEY] = "."
        record[BASE_HASH_KEY] = {"sha256": base_fingerprint(staging, parts), "parts": list(parts)}
        record["self_contained"] = True
        (staging / BASE_MODEL_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out
