"""The folder ``infer.py invert`` writes and ``infer.py edit`` reads: ``inversion.safetensors``
(xs (N+1, R, C, h, w), zs (N, R, C, h, w), timesteps, known) and ``inversion.json`` (format, the
checkpoint, kind, prompt, cfg_src, steps, seed, scheduler, image size, inputs), with the views'
``cameras.json`` for a multi-view inversion; checked on reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from viewdiff.cameras.cameras_json import write_cameras
from viewdiff.editing.inversion import Inversion
from viewdiff.inference.trajectory import Trajectory

FORMAT = "viewdiff.inversion/1"
TENSORS, DOCUMENT, CAMERAS = "inversion.safetensors", "inversion.json", "cameras.json"


def save_inversion(
    out: Path, inversion: Inversion, document: dict, cameras: Trajectory | None = None
) -> None:
    """inversion.safetensors, inversion.json (and the views' cameras.json), never half written
    and never mixed with an older inversion's.

    All are written under temporary names first. The old document goes before the new files are
    renamed in, and the new document comes last, so a kill at any moment leaves the old
    inversion, or the new one, or files without a document (read_inversion names it missing)."""
    names = (TENSORS, CAMERAS, DOCUMENT) if cameras is not None else (TENSORS, DOCUMENT)
    staged = {name: out / f".{name}.partial" for name in names}
    tensors = {
        "xs": inversion.xs.cpu().contiguous(),
        "zs": inversion.zs.cpu().contiguous(),
        "timesteps": inversion.timesteps.cpu(),
        "known": inversion.known.cpu(),
    }
    save_file(tensors, staged[TENSORS])
    if cameras is not None:
        write_cameras(staged[CAMERAS], cameras.K, cameras.w2c, cameras.image_size_hw)
    staged[DOCUMENT].write_text(json.dumps(document, indent=2) + "\n")
    for path in staged.values():
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())
    (out / DOCUMENT).unlink(missing_ok=True)
    for name, path in staged.items():  # the document last
        os.replace(path, out / name)


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
    if document.get("kind") == "multiview" and not (folder / CAMERAS).is_file():
        raise ValueError(f"{folder}: a multi-view inversion without its cameras.json")
    return document, Inversion(timesteps, xs, zs, tensors["known"])


def inversion_to(inversion: Inversion, device: torch.device) -> Inversion:
    """The inversion's latents on ``device``."""
    return Inversion(
        inversion.timesteps, inversion.xs.to(device), inversion.zs.to(device), inversion.known
    )
