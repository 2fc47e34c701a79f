"""``infer.py push``: an export (or its self-contained folder) on the Hugging Face Hub, with a
generated model card (``viewdiff.inference.hub``).

    python infer.py push --export RUN/model --repo-id USER/NAME [--self-contained] [--private]
        [--metrics EVAL/eval.json] [--dry-run DIR]

``--dry-run DIR`` writes what would be uploaded (the files and README.md) into DIR and touches
no network. The upload itself is ``huggingface_hub.HfApi``'s ``create_repo`` (exist_ok) and
``upload_folder``, with the token of ``huggingface-cli login`` or ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from viewdiff.commands.options import add_base_argument, add_checkpoint_argument
from viewdiff.inference.hub import push, read_metrics, stage
from viewdiff.output_folders import check_output_folder
from viewdiff.prior.load import read_export

REPO_ID_HELP = "the Hub repository, USER/NAME or ORG/NAME (created if missing)"


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is NAMESPACE/NAME of allowed characters (an argparse type)."""
    namespace, _, name = repo_id.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not namespace or not name or "/" in name or not set(namespace + name) <= allowed:
        raise argparse.ArgumentTypeError(
            f"expected NAMESPACE/NAME (letters, digits, -_.), got {repo_id!r}"
        )
    return repo_id


def add_push_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py push``: an export on the Hugging Face Hub with a model card."""
    parser = commands.add_parser(
        "push",
        help="upload an export to the Hugging Face Hub with a generated model card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--repo-id", type=check_repo_id, required=True, help=REPO_ID_HELP)
    parser.add_argument("--metrics", type=Path, help="eval.json of infer.py eval, for the card")
    parser.add_argument(
        "--self-contained", action="store_true", help="upload the base pipeline's parts too"
    )
    parser.add_argument("--private", action="store_true", help="a private repository")
    add_base_argument(parser)
    parser.add_argument(
        "--dry-run", type=Path, metavar="DIR", help="write what would be uploaded into DIR"
    )
    parser.set_defaults(run=run_push)


def run_push(args: argparse.Namespace) -> None:
    """Check, stage, then upload (or write the staged folder with --dry-run)."""
    if args.dry_run is not None:
        check_output_folder(args.dry_run, "--dry-run")
        if args.dry_run.exists() and any(args.dry_run.iterdir()):
            raise ValueError(f"--dry-run {args.dry_run}: not empty")
    metrics = read_metrics(args.metrics) if args.metrics is not None else None
    info = read_export(args.checkpoint, args.base)  # every input checked before anything is written
    if Path(info.pretrained_model).is_dir() and not args.self_contained:
        raise ValueError(
            f"--export {args.checkpoint}: its base {info.pretrained_model} "
            "is a local folder, which nobody who downloads the export has: "
            "add --self-contained to upload it too"
        )
    if args.dry_run is not None:
        if args.dry_run.exists():
            args.dry_run.rmdir()  # empty (checked): stage writes a new folder
        stage(info, args.dry_run, args.repo_id, metrics, args.self_contained, args.base)
        print(f"would upload {args.dry_run}/ to {args.repo_id} (README.md is the model card)")
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "upload"
        stage(info, folder, args.repo_id, metrics, args.self_contained, args.base)
        url = push(folder, args.repo_id, args.private)
    print(f"pushed {args.checkpoint} to {url}")
