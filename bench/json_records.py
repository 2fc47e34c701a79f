"""The benchmarks' figures as JSON (``--json PATH``), beside their printed lines.

A benchmark that takes ``--json`` writes a list of flat dicts (one per printed configuration,
numbers as numbers) and rewrites the file after every configuration, so that a run stopped
halfway (a timeout, an out-of-memory error) still leaves what it measured. bench/gpu_suite.py
reads these files instead of parsing the human lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def json_path(text: str) -> Path:
    """An argparse type: a file path whose folder exists (checked before any compute)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text!r} does not exist")
    return path


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json PATH`` option every benchmark shares."""
    parser.add_argument(
        "--json",
        type=json_path,
        metavar="PATH",
        help="also write the figures to PATH as a JSON list of dicts, one per printed line",
    )


class JsonRecords:
    """The figures of one run, rewritten to ``path`` (if any) after each ``add``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict] = []

    def add(self, record: dict) -> None:
        """Append one configuration's figures and rewrite the file."""
        self.records.append(record)
        if self.path is not None:
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(self.records, indent=1) + "\n")
            partial.replace(self.path)  # a reader never sees half a file
