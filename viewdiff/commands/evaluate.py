"""``infer.py eval``: novel-view synthesis on held-out shards, PSNR/SSIM with and without masks."""

from __future__ import annotations

import argparse
import dataclasses

from viewdiff.commands.generation import add_generation_arguments, load_prior, sample_settings
from viewdiff.commands.options import MAX_VIEWS, int_in, positive_int, view_count
from viewdiff.inference.evaluate import format_table, write_results
from viewdiff.inference.heldout import check_heldout_shards, evaluate_heldout
from viewdiff.output_folders import check_output_folder
from viewdiff.prior.load import read_export


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py eval``: novel-view synthesis on held-out shards, PSNR and SSIM."""
    parser = commands.add_parser("eval", help="PSNR/SSIM of novel views on held-out shards")
    parser.add_argument("--shards", required=True, help="held-out shard folder or URL pattern")
    parser.add_argument(
        "--known", type=int_in(1, MAX_VIEWS), default=1, help="true views given per object"
    )
    parser.add_argument(
        "--views", type=view_count, help="views per object (the export's data.n_views)"
    )
    parser.add_argument("--max-objects", type=positive_int, help="stop after this many objects")
    parser.add_argument("--categories", nargs="+", help="default: the export's data.categories")
    parser.add_argument(
        "--view-sampling", choices=("random", "spread"), default="random", help="which N views"
    )
    add_generation_arguments(parser)
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    """Evaluate, write eval.json and compare/*.png, print the table."""
    check_output_folder(args.out)  # first: --out that is a file fails before any compute
    export = read_export(args.checkpoint, args.base)
    settings = sample_settings(args, export)
    data = dataclasses.replace(
        export.config.data,
        shards=str(args.shards),
        n_views=args.views if args.views is not None else export.config.data.n_views,
        categories=tuple(args.categories or export.config.data.categories),
        view_sampling=args.view_sampling,
        num_workers=0,
        shuffle_buffer=1,
    )
    check_heldout_shards(data)  # a wrong --shards fails now
    if not 0 <= args.known < data.n_views:
        raise ValueError(f"--known must be in [0, {data.n_views}) for {data.n_views} views")
    prior = load_prior(args)
    results = evaluate_heldout(
        prior, data, args.known, settings, args.out, args.max_objects, settings.seed
    )
    document = {"checkpoint": str(args.checkpoint), "known": args.known, "n_views": data.n_views}
    write_results(
        args.out / "eval.json", results, {**document, "sample": dataclasses.asdict(settings)}
    )
    print(format_table(results))
    print(f"eval.json and compare/*.png in {args.out}/")
