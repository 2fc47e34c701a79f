"""``python -m viewdiff.commands.camera_record EXPORT [--shards S]``: write
``camera_distribution.json`` into an export made before exports carried it, from the shards it
was trained on (``viewdiff.prior.camera_record``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewdiff.commands.options import EXPORT_HELP, positive_int
from viewdiff.config import read_config_json
from viewdiff.prior.camera_record import record_shards, write_camera_distribution


def main(argv: list[str] | None = None) -> int:
    """Write camera_distribution.json into an export from its training shards."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoint", type=Path, metavar="EXPORT", help=EXPORT_HELP)
    parser.add_argument("--shards", help="training shards (default: the export's data.shards)")
    parser.add_argument("--max-samples", type=positive_int, default=2000, help="samples to read")
    args = parser.parse_args(argv)
    config = read_config_json(args.checkpoint / "config.json")
    shards = args.shards or config.data.shards
    record = record_shards(shards, config.data.image_size, config.data.n_views, args.max_samples)
    path = write_camera_distribution(args.checkpoint, record)
    print(f"{record.count} training views of {shards}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
