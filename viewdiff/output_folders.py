"""Output folders: checked before any compute, so that a refused command leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path


def check_output_folder(path: Path, name: str = "--out") -> None:
    """A ValueError naming ``name`` unless ``path`` is a folder or can be made one there
    (creates nothing: a command refused for another input leaves no folder behind)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path}: {existing} is not writable")
