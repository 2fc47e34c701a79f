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

import json
import math
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

from viewdiff.prior.load import ExportInfo
from viewdiff.prior.self_contained import write_self_contained

CARD_FILE = "README.md"


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


def card_metadata(card: str) -> dict[str, Any]:
    """The YAML metadata of a model card (for tests and checks)."""
    return ModelCard(card).data.to_dict()
