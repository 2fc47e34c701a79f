"""Reading checkpoint files so that a damaged one is named, not a traceback.

safetensors reports a truncated or corrupt file as ``SafetensorError: Error while deserializing
header: ...`` without saying which file. Every weights file the package reads (exports,
training and scene checkpoints, inversion folders, toy stages) goes through ``read_safetensors``,
which raises ``DamagedFile`` (a ValueError: the commands exit 2 with one line) naming it.
``folder_damage`` checks a whole checkpoint folder cheaply before anything in it is loaded.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor


class DamagedFile(ValueError):
    """A file that is there but cannot be read: truncated, corrupt or of another format."""


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file; a damaged one raises DamagedFile naming it."""
    path = Path(path)
    try:
        return load_file(path, device=device)
    except SafetensorError as error:
        raise DamagedFile(
            f"{path}: damaged or truncated safetensors file ({error}); restore or rewrite it"
        ) from None


def folder_damage(path: Path) -> str | None:
    """What makes a complete-looking checkpoint folder unreadable (its file and the fault), or
    None.

    Cheap checks that catch truncation and corruption without loading the states: every
    safetensors header, every JSON document, and every torch archive's (optimizer, RNG states)
    zip directory, which sits at its end.
    """
    for file in sorted(path.iterdir()):
        try:
            if file.suffix == ".safetensors":
                with safe_open(file, framework="pt"):
                    pass
            elif file.suffix == ".json":
                json.loads(file.read_text())
            elif file.suffix in (".bin", ".pkl", ".pt") and not zipfile.is_zipfile(file):
                return f"{file.name}: truncated or not a torch archive"
        except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as error:
            return f"{file.name}: {error}"
    return None
