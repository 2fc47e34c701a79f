"""Argument types shared by the command lines: counts that must be positive are checked by
argparse itself (exit 2 with the flag's name), never read as "the default"."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1 (views, steps, sizes, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
