"""``infer.py push``: an export (or its self-contained folder) on the Hugging Face Hub, with a
generated model card: the base model, the training data and settings, and the metrics of an
``infer.py eval`` when one is given.

    python infer.py push --export RUN/model --repo-id USER/NAME [--self-contained] [--private]
        [--metrics EVAL/eval.json] [--dry-run DIR]

``--dry-run DIR`` writes what would be uploaded (the files and README.md) into DIR and touches
no network. The upload itself is ``huggingface_hub.HfApi``'s ``create_repo`` (exist_ok) and
``upload_folder``, with the token of ``huggingface-cli login`` or ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

from viewdiff.cli_args import BASE_HELP, check_output_folder, existing_folder
from viewdiff.inference.load import ExportInfo, read_export
from viewdiff.inference.self_contained import write_self_contained

CARD_FILE = "README.md"
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


def read_metrics(path: Path) -> dict[str, float]:
    """The mean metrics of an ``infer.py eval`` eval.json ({name: value}), finite ones only."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--metrics {path}: cannot read: {error}") from None
    mean = document.get("mean") if isinstance(document, dict) else None
    if not isinstance(mean, dict):
        raise ValueError(f"--metrics {path}: no 'mean' (not an eval.json of infer.py eval)")
    return {
        str(key): float(value)
        for key, value in mean.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }


def model_card(
    info: ExportInfo, repo_id: str, metrics: dict[str, float] | None, self_contained: bool
) -> str:
    """The README.md of the Hub repository: metadata for the Hub, then what the model is."""
    config = info.config
    base = config.model.pretrained_model
    hub_base = None if Path(info.pretrained_model).is_dir() else info.pretrained_model
    data = ModelCardData(
        base_model=hub_base,
        library_name="viewdiff",
        license=None,
        tags=["multi-view", "novel-view-synthesis", "viewdiff", "stable-diffusion", "3d"],
        model_name=repo_id.split("/")[1],
    )
    train, model, dataset = config.train, config.model, config.data
    lines = [
        f"# {repo_id}",
        "",
        "A multi-view prior trained with viewdiff (ViewDiff, Höllein et al., CVPR 2024): a Stable"
        " Diffusion UNet with cross-frame attention, pose-conditioned LoRA and voxel projection"
        " layers, generating several views of one object that agree in 3D.",
        "",
        "## Base model",
        "",
        f"- `{base}`" + (f" (revision `{info.revision}`)" if info.revision else ""),
        "- this repository holds it too (a self-contained folder)"
        if self_contained
        else "- not in this repository: the export loads it from the Hub or with `--base DIR`",
        "",
        "## Training",
        "",
        f"- data: `{dataset.shards}`, categories {list(dataset.categories) or 'all'}, "
        f"{dataset.n_views} views per object at {dataset.image_size} px",
        f"- `train.mode={train.mode}`, {info.step} steps of {train.max_steps}, learning rate "
        f"{train.learning_rate:g} ({train.lr_scheduler}), batch {train.batch_size} x "
        f"{train.gradient_accumulation_steps} accumulated, precision {train.mixed_precision}",
        f"- cross-frame attention: {model.cross_frame_attention}, pose LoRA: {model.pose_lora} "
        f"(rank {model.pose_lora_rank}), projection layers: {model.projection_layers} "
        f"({model.voxel_grid_size}^3 grids)" + (", EMA weights" if info.ema else ""),
        "- the whole resolved config is `config.json`",
        "",
    ]
    if metrics:
        lines += ["## Metrics (`infer.py eval` on held-out objects)", "", "| metric | value |"]
        lines += ["|---|---|", *[f"| {name} | {value:.4f} |" for name, value in metrics.items()]]
        lines.append("")
    lines += [
        "## Use",
        "",
        "```bash",
        "pip install viewdiff  # or the repository",
        f"huggingface-cli download {repo_id} --local-dir PRIOR",
        'viewdiff-infer sample --checkpoint PRIOR --prompt "a teddy bear" --views 8 --out DIR',
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def stage(
    info: ExportInfo,
    folder: Path,
    repo_id: str,
    metrics: dict[str, float] | None,
    self_contained: bool,
    base: Path | None = None,
) -> Path:
    """Write into ``folder`` (new) what the Hub repository gets: the export read as ``info``, or
    its self-contained folder, and README.md."""
    if self_contained:
        write_self_contained(info.path, folder, base)
    else:
        shutil.copytree(info.path, folder)
    card = model_card(info, repo_id, metrics, self_contained)
    (folder / CARD_FILE).write_text(card)
    return folder


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload a staged folder to the Hub repository (created if missing); returns its URL."""
    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        commit_message="viewdiff export (infer.py push)",
    )
    return str(url)


def add_push_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py push``: an export on the Hugging Face Hub with a model card."""
    parser = commands.add_parser(
        "push",
        help="upload an export to the Hugging Face Hub with a generated model card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--export", type=Path, required=True, help="inference export folder")
    parser.add_argument("--repo-id", type=check_repo_id, required=True, help=REPO_ID_HELP)
    parser.add_argument("--metrics", type=Path, help="eval.json of infer.py eval, for the card")
    parser.add_argument(
        "--self-contained", action="store_true", help="upload the base pipeline's parts too"
    )
    parser.add_argument("--private", action="store_true", help="a private repository")
    parser.add_argument("--base", type=existing_folder, help=BASE_HELP)
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
    info = read_export(args.export, args.base)  # every input checked before anything is written
    if Path(info.pretrained_model).is_dir() and not args.self_contained:
        raise ValueError(
            f"--export {args.export}: its base {info.pretrained_model} is a local folder, which "
            "nobody who downloads the export has: add --self-contained to upload it too"
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
    print(f"pushed {args.export} to {url}")


def card_metadata(card: str) -> dict[str, Any]:
    """The YAML metadata of a model card (for tests and checks)."""
    return ModelCard(card).data.to_dict()
