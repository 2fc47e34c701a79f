"""A resumable checkpoint of a Gaussian scene under optimisation: one folder, swapped in whole.

    folder/scene.ply            the scene (``viewdiff.scene.gaussians``' 3DGS PLY)
    folder/state.safetensors    every other tensor: Adam's moments, density statistics, RNG
                                states (``GaussianFitter.checkpoint_state``) and the loop's own
    folder/state.json           the rest: ``{"format": ..., <the loop's fields>}``

SDS (``viewdiff.sds.loop``) and TrAME (``viewdiff.trame.editor``) each name their format and
fields; this module only writes and reads the folder. The write goes through
``viewdiff.atomic_folder``, so a kill at any moment leaves the previous checkpoint or the new one,
whole; the reader first undoes what an interrupted swap left (``recover_folder``). A missing or
damaged file is a ValueError naming it, and so is a tensor or field a loop needs that the files
lack (``FileEntries``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from viewdiff.atomic_folder import atomic_folder, recover_folder
from viewdiff.disk_full import disk_full_error, is_disk_full
from viewdiff.scene.gaussians import GaussianScene, read_gaussian_ply, write_gaussian_ply

CHECKPOINT = "checkpoint"
"""The checkpoint folder in an SDS or edit-scene run folder: ``<out>/checkpoint/``."""
SCENE_FILE, TENSORS_FILE, STATE_FILE = "scene.ply", "state.safetensors", "state.json"
CHECKPOINT_FILES = (SCENE_FILE, TENSORS_FILE, STATE_FILE)


class FileEntries(dict):
    """The entries read from one file: a missing key is a ValueError naming the file (a damaged
    or foreign checkpoint), not a bare KeyError."""

    def __init__(self, path: Path, entries: dict) -> None:
        super().__init__(entries)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise ValueError(f"{self.path}: no {key!r}: a damaged checkpoint or one of another run")


@dataclass
class SceneCheckpoint:
    """What ``read_checkpoint`` read: the scene, the tensors, the JSON state (with its format)."""

    folder: Path
    scene: GaussianScene
    tensors: FileEntries  # name -> tensor, on the device asked for
    state: FileEntries  # the JSON document


def write_checkpoint(
    folder: str | Path,
    format: str,
    scene: GaussianScene,
    tensors: dict[str, Tensor],
    state: dict[str, Any],
) -> Path:
    """Replace ``folder`` atomically by a checkpoint of ``scene``, ``tensors`` and the JSON
    ``state`` (stamped with ``format``); returns the folder."""
    folder = Path(folder)
    try:
        with atomic_folder(folder) as staging:
            write_gaussian_ply(staging / SCENE_FILE, scene.detach())
            cpu = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
            save_file(cpu, staging / TENSORS_FILE)
            document = {"format": format, **state}
            (staging / STATE_FILE).write_text(json.dumps(document, indent=2) + "\n")
    except (OSError, RuntimeError) as error:  # the previous checkpoint is back in place
        if not is_disk_full(error):
            raise
        last = folder if (folder / STATE_FILE).is_file() else None
        raise disk_full_error(folder, last) from error
    return folder


def read_checkpoint_state(folder: str | Path, format: str, what: str) -> FileEntries:
    """The JSON state of a checkpoint folder (after recovering an interrupted write), checked:
    every file there, the JSON readable and of ``format``; ``what`` names the kind in errors."""
    folder = Path(folder)
    recover_folder(folder)
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not {what}: missing {', '.join(missing)}")
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read: {error}") from None
    if not isinstance(state, dict) or state.get("format") != format:
        raise ValueError(f"{path}: not a {format} file")
    return FileEntries(path, state)


def read_checkpoint(
    folder: str | Path, format: str, what: str, device: torch.device | str = "cpu"
) -> SceneCheckpoint:
    """The checkpoint ``write_checkpoint`` wrote into ``folder`` (recovered, checked as in
    ``read_checkpoint_state``), the scene and tensors on ``device``."""
    folder = Path(folder)
    state = read_checkpoint_state(folder, format, what)
    path = folder / SCENE_FILE
    try:
        scene = read_gaussian_ply(path, device=device)
    except (OSError, UnicodeDecodeError, ValueError, IndexError, KeyError) as error:
        message = str(error)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from None
    path = folder / TENSORS_FILE
    try:
        tensors = load_file(path, device=str(device))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path}: cannot read: {error}") from None
    return SceneCheckpoint(folder, scene, FileEntries(path, tensors), state)
