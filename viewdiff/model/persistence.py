"""Saving and loading the multi-view UNet: what was added, on top of the UNet's own formats.

An export folder holds

    multiview.safetensors  the added weights (pose-conditioned LoRA, projection layers)
    multiview.json         the ModelConfig they were built with, the base UNet's shape, and which
                           UNet weights come with them:
    unet/                  "full": the fine-tuned UNet, as diffusers' save_pretrained writes it,
    unet_lora/             "lora": a peft LoRA adapter on the base UNet (adapter_config.json +
                           adapter_model.safetensors, peft's own format), and the same LoRA as
    pytorch_lora_weights.safetensors
                           in diffusers' format, which any Stable Diffusion pipeline of the
                           base loads with ``pipe.load_lora_weights(folder)``,
                           "none": nothing, the base UNet was not trained.

Loading rebuilds the model from the saved config and refuses, naming the file and what differs,
a config other than the expected one, a base UNet of another shape, or weights whose keys or
shapes differ from the rebuilt model's. Only safetensors and JSON are read, never a pickle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from diffusers import UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from viewdiff.config import ConfigError, ModelConfig, config_from_dict, with_legacy_defaults
from viewdiff.model.multiview_unet import MultiViewUNet
from viewdiff.weights_files import DamagedFile, read_safetensors

UNetWeights = Literal["full", "lora", "none"]
FORMAT = "viewdiff.multiview/1"
WEIGHTS_FILE = "multiview.safetensors"
CONFIG_FILE = "multiview.json"
UNET_DIR = "unet"
UNET_LORA_DIR = "unet_lora"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # peft's name
DIFFUSERS_LORA_FILE = LORA_WEIGHT_NAME_SAFE  # pytorch_lora_weights.safetensors
# How the model runs, not what it is: taken from the expected config, never a mismatch.
RUNTIME_FIELDS = ("attention_backend", "projection_checkpointing")


def unet_fingerprint(unet: UNet2DConditionModel) -> dict[str, Any]:
    """The parts of a UNet's config that the added weights depend on."""
    keys = (
        "in_channels",
        "out_channels",
        "block_out_channels",
        "layers_per_block",
        "attention_head_dim",
        "cross_attention_dim",
        "down_block_types",
        "up_block_types",
    )
    return json.loads(json.dumps({key: unet.config[key] for key in keys}))


def has_peft_adapter(unet: UNet2DConditionModel) -> bool:
    """Whether a peft adapter was added to the UNet."""
    return bool(getattr(unet, "peft_config", None))


def save_multiview_unet(
    model: MultiViewUNet, directory: str | Path, unet_weights: UNetWeights = "full"
) -> None:
    """Write the added weights and config, plus the UNet ('full'), its peft adapter or nothing."""
    directory = Path(directory)
    if unet_weights not in ("full", "lora", "none"):
        raise ValueError(f"unet_weights must be 'full', 'lora' or 'none', got {unet_weights!r}")
    if unet_weights == "full" and has_peft_adapter(model.unet):
        raise ValueError("the UNet carries a peft LoRA adapter: save it with unet_weights='lora'")
    if unet_weights == "lora" and not has_peft_adapter(model.unet):
        raise ValueError("unet_weights='lora' but the UNet has no peft adapter (add_base_lora)")
    directory.mkdir(parents=True, exist_ok=True)
    added = {k: v.detach().contiguous() for k, v in model.added_state_dict().items()}
    save_file(added, directory / WEIGHTS_FILE, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "model": json.loads(json.dumps(dataclasses.asdict(model.config))),
        "base_unet": unet_fingerprint(model.unet),
        "unet_weights": unet_weights,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if unet_weights == "full":
        model.unet.save_pretrained(directory / UNET_DIR, safe_serialization=True)
    elif unet_weights == "lora":
        adapter_dir = directory / UNET_LORA_DIR
        adapter_dir.mkdir(exist_ok=True)
        adapter = {
            k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model.unet).items()
        }
        save_file(adapter, adapter_dir / ADAPTER_WEIGHTS_FILE, metadata={"format": "pt"})
        model.unet.peft_config["default"].save_pretrained(str(adapter_dir))
        save_diffusers_lora(model.unet, directory)


def save_diffusers_lora(unet: UNet2DConditionModel, directory: str | Path) -> Path:
    """Write the UNet's peft LoRA as ``directory/pytorch_lora_weights.safetensors`` for diffusers.

    diffusers' own saver, as its LoRA training scripts call it: peft keys with the ``unet.``
    prefix and the adapter config (rank, alpha, targets) as metadata, so that
    ``StableDiffusionPipeline.load_lora_weights(directory)`` rebuilds the same adapter. Only the
    LoRA on the base UNet's weights goes there: the multi-view layers (cross-frame attention's
    pose-conditioned LoRA, projection layers) need our processors, which a plain SD pipeline has
    not. Loaded alone, it gives the base UNet's weights as they were fine-tuned beside those
    layers: single-view SD with what training changed in it, not the multi-view prior.
    """
    layers = convert_state_dict_to_diffusers(
        {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    )
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        directory,
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    return Path(directory) / DIFFUSERS_LORA_FILE


def load_multiview_unet(
    directory: str | Path,
    base_unet: UNet2DConditionModel | None = None,
    expected_config: ModelConfig | None = None,
) -> MultiViewUNet:
    """Rebuild a model written by ``save_multiview_unet``, refusing anything that does not match.

    ``base_unet`` is the UNet the model was trained from (``config.model.pretrained_model``); it
    is needed for 'lora' and 'none' exports and must be None for 'full' ones, which carry theirs.
    ``expected_config`` must equal the saved one, except for how the model runs (the attention
    backend, activation checkpointing), which it sets.
    """
    directory = Path(directory)
    meta_path = directory / CONFIG_FILE
    meta = _read_meta(meta_path)
    saved = with_legacy_defaults({"model": meta["model"]})
    config = config_from_dict(saved, source=str(meta_path)).model
    if expected_config is not None:
        runtime = {name: getattr(expected_config, name) for name in RUNTIME_FIELDS}
        config = dataclasses.replace(config, **runtime)
        if expected_config != config:
            raise ConfigError(
                f"{meta_path}: saved with another model config: "
                f"{_differences(config, expected_config)}"
            )
    unet = _load_unet(directory, meta, base_unet)
    saved_shape, shape = meta["base_unet"], unet_fingerprint(unet)
    if saved_shape != shape:
        differs = [
            f"{k}: saved {saved_shape.get(k)!r}, given {shape[k]!r}"
            for k in shape
            if saved_shape.get(k) != shape[k]
        ]
        raise ValueError(
            f"{meta_path}: the base UNet differs from the one saved: {'; '.join(differs)}"
        )
    if meta["unet_weights"] == "lora":
        _load_adapter(unet, directory / UNET_LORA_DIR)
    model = MultiViewUNet(unet, config)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: missing (the added weights)")
    weights = read_safetensors(weights_path)
    check_weights(model.added_state_dict(), weights, str(weights_path))
    model.load_state_dict(weights, strict=False)
    return model


def _read_meta(path: Path) -> dict[str, Any]:
    """The export's multiview.json, checked for format and keys."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"{path}: cannot read the multi-view model description: {error}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a {FORMAT} description (format {meta.get('format')!r})")
    missing = [k for k in ("model", "base_unet", "unet_weights") if k not in meta]
    if missing or meta["unet_weights"] not in ("full", "lora", "none"):
        raise ConfigError(f"{path}: missing or invalid keys {missing or ['unet_weights']}")
    return meta


def _load_unet(
    directory: Path, meta: dict[str, Any], base_unet: UNet2DConditionModel | None
) -> UNet2DConditionModel:
    """The saved full UNet, or the given base UNet for 'lora' and 'none' exports."""
    if meta["unet_weights"] == "full":
        if base_unet is not None:
            raise ValueError(f"{directory} holds its full UNet ({UNET_DIR}/): pass base_unet=None")
        try:
            return UNet2DConditionModel.from_pretrained(directory / UNET_DIR, use_safetensors=True)
        except (OSError, SafetensorError, ValueError) as error:  # diffusers names no file
            raise DamagedFile(
                f"{directory / UNET_DIR}: cannot load the saved UNet: {error}"
            ) from None
    if base_unet is None:
        raise ValueError(
            f"{directory} holds no UNet ({meta['unet_weights']!r}): pass the base UNet it was "
            f"trained from, {meta['model'].get('pretrained_model')!r}"
        )
    if meta["unet_weights"] == "lora" and has_peft_adapter(base_unet):
        raise ValueError("base_unet already carries a peft adapter; pass the plain base UNet")
    return base_unet


def _load_adapter(unet: UNet2DConditionModel, adapter_dir: Path) -> None:
    """Add the saved peft LoRA adapter to the UNet and load its weights, checked."""
    lora_config = LoraConfig.from_pretrained(str(adapter_dir))
    unet.add_adapter(lora_config)
    weights_path = adapter_dir / ADAPTER_WEIGHTS_FILE
    weights = read_safetensors(weights_path)
    check_weights(get_peft_model_state_dict(unet), weights, str(weights_path))
    result = set_peft_model_state_dict(unet, weights)
    # peft annotates the result as a bare `namedtuple`; it is torch's _IncompatibleKeys.
    unexpected = result.unexpected_keys  # type: ignore[attr-defined]
    if unexpected:
        raise ValueError(f"{weights_path}: unexpected adapter keys {unexpected[:5]}")


def check_weights(expected: dict[str, Tensor], found: dict[str, Tensor], source: str) -> None:
    """Refuse weights whose keys or shapes differ from the model's, saying which."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k} saved {tuple(found[k].shape)} expected {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if found[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    if problems:
        raise ValueError(
            f"{source} does not match the model built from its config: {'; '.join(problems)}"
        )


def _differences(saved: ModelConfig, expected: ModelConfig) -> str:
    """'model.key: saved a, expected b' for every field that differs."""
    return "; ".join(
        f"model.{f.name}: saved {getattr(saved, f.name)!r}, expected {getattr(expected, f.name)!r}"
        for f in dataclasses.fields(ModelConfig)
        if getattr(saved, f.name) != getattr(expected, f.name)
    )
