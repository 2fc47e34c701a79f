"""``python -m viewdiff.commands.self_contained --export RUN/model --out PRIOR [--base DIR]``:
an export and its base pipeline in one folder (``viewdiff.prior.self_contained``)."""

from __future__ import annotations

import argparse

from viewdiff.commands.options import add_base_argument, add_checkpoint_argument, add_out_argument
from viewdiff.prior.self_contained import write_self_contained


def main(argv: list[str] | None = None) -> int:
    """Command line: write one export's self-contained folder; exit 2 with one line if refused."""
    parser = argparse.ArgumentParser(
        prog="python -m viewdiff.commands.self_contained",
        description="Write an inference export and its base pipeline into one folder.",
    )
    add_checkpoint_argument(parser)
    add_out_argument(parser, "the new folder")
    add_base_argument(parser)
    args = parser.parse_args(argv)
    try:
        out = write_self_contained(args.checkpoint, args.out, args.base)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    where = "MultiViewPipeline.from_pretrained, --checkpoint"
    print(f"{args.checkpoint} and its base -> {out}/ ({where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
