"""Reading safetensors files so that a damaged one is named, not a traceback.

safetensors reports a truncated or corrupt file as ``SafetensorError: Error while deserializing
header: ...`` without saying which file. Every weights file the package reads (exports,
training and scene checkpoints, inversion folders, toy stages) goes through ``read_safetensors``,
which raises ``DamagedFile`` (a ValueError: the commands exit 2 with one line) naming it.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
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
