"""What the command lines share: counts that must be positive are checked by argparse itself
(exit 2 with the flag's name, never read as "the default"), and output folders are checked
before any compute."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def positive_int(text: str) -> int:
    """An integer >= 1 (views, steps, sizes, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
