"""The folder ``infer.py invert`` writes and ``infer.py edit`` reads: ``inversion.safetensors``
(xs (N+1, R, C, h, w), zs (N, R, C, h, w), timesteps, known) and ``inversion.json`` (format, the
checkpoint, kind, prompt, cfg_src, steps, seed, scheduler, image size, inputs), checked on reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from viewdiff.editing.inversion import Inversion

FORMAT = "viewdiff.inversion/1"
TENSORS, DOCUMENT = "inversion.safetensors", "inversion.json"


def save_inversion(out: Path, inversion: Inversion, document: dict) -> None:
    """inversion.safetensors and inversion.json."""
    save_file(
        {
            "xs": inversion.xs.cpu().contiguous(),
            "zs": inversion.zs.cpu().contiguous(),
            "timesteps": inversion.timesteps.cpu(),
            "known": inversion.known.cpu(),
        },
        out / TENSORS,
    )
    (out / DOCUMENT).write_text(json.dumps(document, indent=2) + "\n")


def read_inversion(folder: Path) -> tuple[dict, Inversion]:
    """An invert folder's document and tensors, checked; a ValueError names what is wrong."""
    if not Path(folder).is_dir():
        raise ValueError(f"--inversion {folder}: not a folder")
    path = folder / DOCUMENT
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    try:
        tensors = load_file(folder / TENSORS)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{folder / TENSORS}: cannot read: {error}") from None
    missing = [k for k in ("xs", "zs", "timesteps", "known") if k not in tensors]
    if missing:
        raise ValueError(f"{folder / TENSORS}: no {', '.join(missing)}")
    xs, zs, timesteps = tensors["xs"], tensors["zs"], tensors["timesteps"]
    n = timesteps.shape[0]
    if xs.shape[0] != n + 1 or zs.shape[0] != n or xs.shape[1:] != zs.shape[1:]:
        raise ValueError(
            f"{folder / TENSORS}: xs {tuple(xs.shape)}, zs {tuple(zs.shape)} and "
            f"{n} timesteps do not fit together"
        )
    if document.get("kind") == "multiview" and not (folder / "cameras.json").is_file():
        raise ValueError(f"{folder}: a multi-view inversion without its cameras.json")
    return document, Inversion(timesteps, xs, zs, tensors["known"])


def inversion_to(inversion: Inversion, device: torch.device) -> Inversion:
    """The inversion's latents on ``device``."""
    return Inversion(
        inversion.timesteps, inversion.xs.to(device), inversion.zs.to(device), inversion.known
    )
