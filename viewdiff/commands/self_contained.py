"""``python -m viewdiff.commands.self_contained --export RUN/model --out PRIOR [--base DIR]``:
an export and its base pipeline in one folder (``viewdiff.prior.self_contained``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from viewdiff.commands.options import BASE_HELP, existing_folder
from viewdiff.prior.self_contained import write_self_contained


def main(argv: list[str] | None = None) -> int:
    """Command line: write one export's self-contained folder; exit 2 with one line if refused."""
    parser = argparse.ArgumentParser(
        prog="python -m viewdiff.commands.self_contained",
        description="Write an inference export and its base pipeline into one folder.",
    )
    parser.add_argument("--export", type=Path, required=True, help="inference export")
    parser.add_argument("--out", type=Path, required=True, help="the new folder")
    parser.add_argument("--base", type=existing_folder, metavar="DIR", help=BASE_HELP)
    args = parser.parse_args(argv)
    try:
        out = write_self_contained(args.export, args.out, args.base)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"{args.export} and its base -> {out}/ (MultiViewPipeline.from_pretrained, --checkpoint)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
