"""What an export's ``base_model.json`` says about its base pipeline, and how it is found again.

An export holds only what training changed; the rest (tokenizer, text encoder, VAE and, for
``lora`` and ``new_layers`` exports, the UNet) comes from the base pipeline it was trained from.
``base_record`` writes, for a hub base, the hub id and revision; for a local folder also its
absolute path, its path relative to the export and a fingerprint of the parts the export loads
from it. ``locate_base`` finds the base from any working directory: an explicit override, else
the folder beside the export (the relative path: an export moved or shipped with its base), else
the absolute path, each checked against the fingerprint; a hub id is left to diffusers.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BASE_MODEL_FILE = "base_model.json"
BASE_FROM_EXPORT_KEY = "pretrained_model_from_export"  # the base folder, relative to the export
BASE_PATH_KEY = "pretrained_model_path"  # the base folder, absolute, where training saw it
BASE_HASH_KEY = "pretrained_model_hash"  # {"sha256": ..., "parts": [...]}
# The parts of the base that an export loads, by the export's UNet weights (multiview.json).
ENCODER_PARTS = ("text_encoder", "tokenizer", "vae")
SAMPLED_BYTES = 1 << 20  # a file over twice this is hashed by its size, first and last MiB


def base_parts(unet_weights: str) -> tuple[str, ...]:
    """The base's subfolders an export loads: its UNet too unless the export carries one."""
    return ENCODER_PARTS if unet_weights == "full" else (*ENCODER_PARTS, "unet")


def base_fingerprint(folder: str | Path, parts: Sequence[str]) -> str:
    """A sha256 of the files of ``parts`` (subfolders of ``folder``); a ValueError if one is
    missing.

    Every file of those subfolders (hidden ones excepted: caches, editor files) enters with its
    path relative to ``folder`` and its size; a file of at most 2 MiB (configs, tokenizer
    files, tiny weights) with all its bytes, a larger one (weights) with its first and its last
    MiB. A safetensors file begins with its header (every tensor's name, dtype, shape and
    offset) and the first tensors' data, so another architecture, precision or fine-tune changes
    the sample, while SD 2.1's 5 GB hash in milliseconds: the check runs every time an export is
    read. It is not a proof against deliberate edits in a file's middle. ``model_index.json``
    and ``scheduler/`` are left out: an export carries its own noise schedule, and a
    self-contained folder rewrites the index, so that its copy of the base hashes as the
    original did.
    """
    folder, digest = Path(folder), hashlib.sha256()
    for part in sorted(parts):
        root = folder / part
        if not root.is_dir():
            raise ValueError(f"{root}: missing (the base model's {part})")
        files = sorted(
            path
            for path in root.rglob("*")
            if path.is_file() and not any(n.startswith(".") for n in path.relative_to(root).parts)
        )
        for path in files:
            size = path.stat().st_size
            digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
            with path.open("rb") as file:
                if size <= 2 * SAMPLED_BYTES:
                    digest.update(file.read())
                else:
                    digest.update(file.read(SAMPLED_BYTES))
                    file.seek(size - SAMPLED_BYTES)
                    digest.update(file.read(SAMPLED_BYTES))
    return digest.hexdigest()


def base_record(
    pretrained_model: str, revision: str | None, export: str | Path, unet_weights: str
) -> dict[str, Any]:
    """base_model.json's description of the base: the config's string and revision, and for a
    local folder its absolute path, its path relative to ``export`` and its fingerprint."""
    record: dict[str, Any] = {"pretrained_model": pretrained_model, "revision": revision}
    local = Path(pretrained_model)
    if local.is_dir():
        parts = base_parts(unet_weights)
        record[BASE_PATH_KEY] = str(local.resolve())
        record[BASE_FROM_EXPORT_KEY] = os.path.relpath(local.resolve(), Path(export).resolve())
        record[BASE_HASH_KEY] = {"sha256": base_fingerprint(local, parts), "parts": list(parts)}
    return record


def _differs(folder: str | Path, fingerprint: dict[str, Any] | None) -> str | None:
    """Why ``folder`` is not the recorded base (None: it is, or nothing was recorded)."""
    if not isinstance(fingerprint, dict):
        return None
    try:
        found = base_fingerprint(folder, fingerprint.get("parts", ()))
    except ValueError as error:
        return str(error)
    if found != fingerprint.get("sha256"):
        parts = "/, ".join(fingerprint.get("parts", ()))
        return f"its {parts}/ hash {found[:12]}, the export's base {fingerprint['sha256'][:12]}"
    return None


def locate_base(
    export: str | Path, record: dict[str, Any], override: str | Path | None = None
) -> str:
    """The folder (or hub id) of the export's base pipeline, read from its base_model.json.

    ``override`` (``--base DIR``) wins, with a warning if it is not the recorded base. Else the
    folder beside the export, then the absolute path of training, whichever holds the recorded
    base; a folder there that differs, or a local base found nowhere, is a ValueError that names
    the file and says to pass ``--base``. A hub id (or an export written before paths were
    recorded) is returned as it is.
    """
    export, source = Path(export), Path(export) / BASE_MODEL_FILE
    fingerprint = record.get(BASE_HASH_KEY)
    if override is not None:
        if not Path(override).is_dir():
            raise ValueError(f"base {override}: not a folder (a Stable Diffusion pipeline folder)")
        why = _differs(override, fingerprint)
        if why is not None:
            warnings.warn(
                f"{source}: the base {override} is not the one the export was trained from "
                f"({why}); using it as asked",
                stacklevel=3,
            )
        return str(override)
    candidates = []
    relative, absolute = record.get(BASE_FROM_EXPORT_KEY), record.get(BASE_PATH_KEY)
    if isinstance(relative, str):
        candidates.append(os.path.normpath(export / relative))
    if isinstance(absolute, str):
        candidates.append(absolute)
    differing = []
    for candidate in candidates:
        if Path(candidate).is_dir():
            why = _differs(candidate, fingerprint)
            if why is None:
                return candidate
            differing.append(f"{candidate} ({why})")
    if differing:
        raise ValueError(
            f"{source}: the base model at {'; '.join(differing)} is not the one the export was "
            "trained from; pass the right folder with --base DIR (or that one, to use it anyway)"
        )
    if isinstance(absolute, str):
        raise ValueError(
            f"{source}: the base model {record['pretrained_model']!r} is neither at "
            f"{' nor at '.join(candidates)}; pass its folder with --base DIR"
        )
    return record["pretrained_model"]
