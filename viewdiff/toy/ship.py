"""Ship the toy world in the package: the base SD folder and the multi-view export, in fp16.

    python -m viewdiff.toy ship --base runs/toy/base/sd --export runs/toy/multiview/model \\
        --out viewdiff/assets/toy

writes ``OUT/sd/`` (a Stable Diffusion folder) and ``OUT/multiview/`` (an inference export whose
``base_model.json`` points at ``../sd``, with the fingerprint of the fp16 copy and without the
absolute path of the machine that shipped it, so it loads wherever the package is installed) and
``OUT/provenance.json`` (what made them). The export's config.json gets the SDS settings of
``--sds-config`` (configs/sds_tiny.yaml), so ``infer.py sds`` on the shipped prior runs a few
hundred steps, not the 10,000 of a GPU run. Floating-point weights of the UNets and the VAE are
stored as fp16 (diffusers loads them back into fp32 models); the text encoder stays fp32, as
transformers would otherwise load it in fp16. Only safetensors and JSON are written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from viewdiff.atomic_folder import atomic_folder
from viewdiff.config import read_config_json, save_config
from viewdiff.prior.base_record import (
    BASE_FROM_EXPORT_KEY,
    BASE_HASH_KEY,
    BASE_MODEL_FILE,
    BASE_PATH_KEY,
    base_fingerprint,
)
from viewdiff.sds.config import SdsConfig

SD, MULTIVIEW = "sd", "multiview"
# What the shipped prior's SDS starts from: a few hundred steps on a CPU (infer.py sds).
TOY_SDS_PRESET = Path(__file__).resolve().parents[1] / "configs" / "sds_tiny.yaml"
# Weight files stored in fp16 where present, relative to their folder (a LoRA or new-layers
# export has no unet/).
HALF_PRECISION = {
    SD: ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"),
    MULTIVIEW: ("unet/diffusion_pytorch_model.safetensors", "multiview.safetensors"),
}
BUDGET_MB = 20.0


def to_half(path: Path) -> None:
    """Rewrite a safetensors file with its float32 tensors as float16 (metadata kept)."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    half = {
        key: value.half() if value.dtype == torch.float32 else value
        for key, value in tensors.items()
    }
    save_file(half, path, metadata=metadata)


def folder_megabytes(folder: Path) -> float:
    """Size of every file under ``folder``, in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def ship_toy(
    base: Path, export: Path, out: Path, provenance: dict, sds: SdsConfig | None = None
) -> float:
    """Copy base and export into ``out`` (replacing what is there) in fp16, the export carrying
    ``sds`` as its SDS settings (what ``infer.py sds`` starts from); the size in MB."""
    if not (base / "model_index.json").is_file():
        raise ValueError(f"--base {base}: no model_index.json (not a Stable Diffusion folder)")
    if not (export / BASE_MODEL_FILE).is_file():
        raise ValueError(f"--export {export}: no {BASE_MODEL_FILE} (not a training export)")
    recorded = json.loads((export / BASE_MODEL_FILE).read_text()).get(BASE_HASH_KEY)
    if (
        isinstance(recorded, dict)
        and base_fingerprint(base, recorded["parts"]) != recorded["sha256"]
    ):
        raise ValueError(
            f"--base {base}: not the base the export was trained from ({BASE_MODEL_FILE})"
        )
    with atomic_folder(out) as staging:  # over budget: the error leaves ``out`` as it was
        shutil.copytree(base, staging / SD)
        shutil.copytree(export, staging / MULTIVIEW)
        for folder, files in HALF_PRECISION.items():
            for name in files:
                if (staging / folder / name).is_file():
                    to_half(staging / folder / name)
        base_file = staging / MULTIVIEW / BASE_MODEL_FILE
        base_model = json.loads(base_file.read_text())
        base_model[BASE_FROM_EXPORT_KEY] = f"../{SD}"
        base_model.pop(BASE_PATH_KEY, None)
        if isinstance(base_model.get(BASE_HASH_KEY), dict):  # the fp16 copy is another file
            parts = base_model[BASE_HASH_KEY]["parts"]
            base_model[BASE_HASH_KEY]["sha256"] = base_fingerprint(staging / SD, parts)
        base_file.write_text(json.dumps(base_model, indent=2) + "\n")
        if sds is not None:
            config = read_config_json(staging / MULTIVIEW / "config.json")
            save_config(dataclasses.replace(config, sds=sds), staging / MULTIVIEW / "config.json")
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        size = folder_megabytes(staging)
        if size > BUDGET_MB:
            raise ValueError(
                f"the toy world takes {size:.1f} MB, over its {BUDGET_MB:.0f} MB budget"
            )
    return size
