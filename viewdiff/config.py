"""Typed configuration: one dataclass tree, strict YAML presets, dotted command-line overrides.

A run's config is resolved in three layers: the defaults written below (the paper's settings),
a YAML preset (``--config configs/x.yaml``) that may only set known keys, and ``key.sub=value``
overrides from the command line. The resolved config is written as JSON into every run folder
and every export, and loads back to an equal object.

The string under each field is its documentation: ``--help`` prints it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import re
import textwrap
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

# The schema: every section and field, with its default and its documentation.


@dataclass(frozen=True)
class ModelConfig:
    """The base pipeline and what ViewDiff adds to its UNet."""

    pretrained_model: str = "stabilityai/stable-diffusion-2-1-base"
    """Base Stable Diffusion pipeline: a local diffusers folder or a hub id."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) of ``pretrained_model``; ignored for local folders."""

    cross_frame_attention: bool = True
    """Self-attention (attn1) attends to the keys/values of all N views of the object."""

    pose_lora: bool = True
    """Add the pose-conditioned LoRA to to_q/to_k/to_v/to_out of every attn1 and attn2."""

    pose_lora_rank: int = 64
    """Rank of the pose-conditioned LoRA on to_q/to_k/to_v/to_out of attn1 and attn2."""

    pose_timestep_dim: int = 8
    """Width of the timestep projection appended to the pose condition of attn1's LoRA (0: none)."""

    projection_layers: bool = True
    """Insert voxel projection layers (unproject, aggregate, 3D CNN, volume render)."""

    projection_blocks: tuple[str, ...] = ("down_blocks.2", "mid_block", "up_blocks.1")
    """UNet blocks followed by a projection layer (the widest stages of SD 2.1 base)."""

    projection_channels: int = 16
    """C': feature channels inside the projection layer's voxel grid."""

    voxel_grid_size: int = 32
    """G (even): the projection layer's grid of G^3 voxels over the object box (see below)."""

    render_samples: int = 128
    """Samples per ray between near and far when rendering the grid (x2 with the background)."""

    projection_background: bool = True
    """Grid over [-2, 2]^3 with MERF's contraction: inner half the object box, outer the rest."""

    projection_checkpointing: bool = False
    """Recompute the projection layers' activations in the backward pass (saves memory)."""

    base_lora_rank: int = 16
    """Rank of the peft LoRA on the base UNet's to_q/to_k/to_v/to_out.0 (train.mode=lora)."""

    attention_backend: Literal["sdpa", "xformers"] = "sdpa"
    """Kernel of cross-frame attention: torch SDPA (everywhere) or xformers (CUDA only)."""


@dataclass(frozen=True)
class DataConfig:
    """Where posed views come from and how batches are drawn."""

    shards: str = "data/shards/co3d"
    """Shard folder (with its manifest) or any webdataset URL/brace pattern, e.g. pipe:..."""

    categories: tuple[str, ...] = ()
    """CO3D categories to train on; empty means every category in the shards."""

    image_size: int = 256
    """Side of the square views fed to the model, in pixels (a multiple of 8)."""

    n_views: int = 5
    """N: views of one object per sample, denoised jointly."""

    view_sampling: Literal["random", "spread"] = "random"
    """How N views are drawn from a sequence: uniformly at random or spread around it."""

    num_workers: int = 4
    """DataLoader worker processes per rank."""

    shuffle_buffer: int = 500
    """Samples held in webdataset's shuffle buffer."""


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation, checkpoints and logging of ``train.py``."""

    output_dir: str = "runs/co3d_sd21"
    """Run folder: checkpoints/, model/ (the inference export), logs/ and config.json."""

    seed: int = 0
    """Seed of model initialisation, noise and data order."""

    mode: Literal["full", "lora", "new_layers"] = "full"
    """Full UNet fine-tune, peft LoRA on the base weights + new layers, or new layers only."""

    max_steps: int = 60_000
    """Optimiser steps to train for."""

    batch_size: int = 4
    """Objects per GPU per micro-batch (each with N views)."""

    gradient_accumulation_steps: int = 8
    """Micro-batches accumulated per optimiser step."""

    learning_rate: float = 5e-5
    """AdamW learning rate of the UNet and the new attention/LoRA weights."""

    renderer_learning_rate: float = 1e-3
    """AdamW learning rate of the projection layers' volume renderer."""

    renderer_weight_decay: float = 0.0
    """AdamW weight decay of the volume renderer."""

    lr_warmup_steps: int = 0
    """Linear warm-up steps of the learning rate, constant afterwards (reference: none)."""

    adam_beta1: float = 0.9
    """AdamW beta1."""

    adam_beta2: float = 0.999
    """AdamW beta2."""

    adam_weight_decay: float = 1e-2
    """AdamW decoupled weight decay."""

    adam_epsilon: float = 1e-8
    """AdamW epsilon."""

    max_grad_norm: float = 5e-3
    """Gradient clipping by global norm (the reference clips hard); 0 disables it."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Mixed precision of the forward/backward pass (the reference trains in fp32)."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""

    zero_terminal_snr: bool = True
    """Rescale the noise schedule to zero terminal SNR (Lin et al. 2024), as the reference."""

    prompt_dropout: float = 0.2
    """Probability of an empty prompt, for classifier-free guidance (reference: 2 x 0.1)."""

    image_condition_prob: float = 0.25
    """Probability that each of the first ``image_condition_views`` views is given clean (t=0)."""

    image_condition_views: int = 2
    """How many of the first views may be given clean as image conditions."""

    checkpoint_every: int = 500
    """Steps between training checkpoints (checkpoints/checkpoint-<step>/)."""

    checkpoints_keep: int = 2
    """Training checkpoints kept; older ones are deleted."""

    resume: str | None = "latest"
    """Resume from 'latest', from a checkpoint folder, or start fresh with null."""

    log_every: int = 50
    """Steps between logged scalars and summary lines."""

    validate_every: int = 500
    """Steps between validation image grids (0: never)."""

    validation_prompts: tuple[str, ...] = ("a teddy bear", "a red hydrant")
    """Prompts of the validation grids: one object of N orbit views each."""

    validation_inference_steps: int = 25
    """Denoising steps of the validation images (DDIM)."""

    validation_guidance_scale: float = 7.5
    """Classifier-free guidance scale of the validation images (text dropped, cameras kept)."""

    export_every: int = 5000
    """Steps between inference exports (model/); one is always written at the end (0: only then)."""

    prediction_type: Literal["base", "epsilon", "v_prediction"] = "base"
    """Training target: the base scheduler's prediction type (the reference), or epsilon / v."""

    nan_policy: Literal["stop", "skip"] = "stop"
    """On a NaN/inf loss: stop (exit 1, last checkpoint intact) or skip the step and count it."""

    use_ema: bool = False
    """Keep an exponential moving average of the trained weights (saved, used for the export)."""

    ema_decay: float = 0.9999
    """EMA decay, capped early in training at (1 + step) / (10 + step) as diffusers' EMAModel."""


@dataclass(frozen=True)
class SampleConfig:
    """Generation with the trained prior: infer.py sample, condition and eval."""

    scheduler: Literal["unipc", "ddim", "ddpm", "dpmsolver", "euler"] = "unipc"
    """Sampler on the training noise schedule (viewdiff.sampling.SCHEDULERS); reference: UniPC."""

    num_inference_steps: int = 10
    """Denoising steps (the reference: 10 UniPC steps)."""

    guidance_scale: float = 7.5
    """Classifier-free guidance (text dropped, cameras kept) of batches that see no given view."""

    image_guidance_scale: float = 1.0
    """Guidance of batches with views given clean (input images, later windows); reference: 1."""

    window_views: int = 10
    """New views denoised jointly per batch; more are made autoregressively (sliding window)."""

    max_conditions: int = 20
    """Most views given clean to a batch: the inputs, then the generated views nearest to it."""

    intensity_stats: Literal["zero", "known"] = "zero"
    """Pose features' intensity mean/var: zeros (the reference) or the given views' statistics."""

    elevation_deg: float = 30.0
    """Elevation of the default orbit above the object's equator (the reference: 30-45 degrees)."""

    radius: float = 4.0
    """Distance of the default orbit's cameras to the object box centre (the reference: 4-4.5)."""

    seed: int = 0
    """Seed of the initial noise; the i-th prompt of a run uses seed + i."""


@dataclass(frozen=True)
class Config:
    """A whole run: model, data and training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The base pipeline and the multi-view additions."""

    data: DataConfig = field(default_factory=DataConfig)
    """The posed views and how batches are drawn."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, checkpoints and logging."""

    sample: SampleConfig = field(default_factory=SampleConfig)
    """Generation with the trained prior (infer.py)."""


# Loading and checking.


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that reads 5e-5 as a float (YAML 1.2) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML follows YAML 1.1, where a float needs a dot: without this, `lr: 5e-5` is a string.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The documentation string written under each field of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _type_name(tp: Any) -> str:
    """Short readable name of a field type, for messages and --help."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"tuple[{_type_name(get_args(tp)[0])}, ...]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the field type ``tp``; return it as the dataclass stores it."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} is a section; expected a mapping, got {value!r}")
        return _build(tp, value, source, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _check_value(value, inner, key, source)
    if origin is Literal:
        if value in get_args(tp):
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            item_type = get_args(tp)[0]
            return tuple(
                _check_value(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)
            )
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{source}: {key} expects {_type_name(tp)}, got {value!r}")


def _unknown_key(cls: type, name: str, prefix: str, source: str) -> ConfigError:
    """Error for a key that is not a field of ``cls``, with the closest known keys."""
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    close += [n for n in names if name.lower() in n and n not in close][: 3 - len(close)]
    if close:
        hint = "did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?"
    else:
        hint = f"known keys here: {', '.join(names)}"
    return ConfigError(f"{source}: unknown key '{prefix}{name}'; {hint}")


def _build(cls: type, values: Mapping[str, Any], source: str, prefix: str = "") -> Any:
    """Instance of the dataclass ``cls`` from a (partial) mapping, checking every key and type."""
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if name not in hints:
            raise _unknown_key(cls, str(name), prefix, source)
        kwargs[name] = _check_value(value, hints[name], prefix + name, source)
    return cls(**kwargs)


def _parse_override(text: str, tp: Any, key: str) -> Any:
    """The value of ``key=text`` read as the field's type (strings stay verbatim)."""
    if get_origin(tp) in (Union, types.UnionType):
        if text in ("null", "None", "~"):
            return None
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
    if tp is str or (get_origin(tp) is Literal and all(isinstance(a, str) for a in get_args(tp))):
        return text
    if get_origin(tp) is tuple and not text.startswith("["):
        # `data.categories=teddybear,hydrant` reads as a list; an empty value as ().
        items = [item.strip() for item in text.split(",") if item.strip()]
        return [_parse_override(item, get_args(tp)[0], key) for item in items]
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {key}={text}: not a valid value ({error})") from None


def _apply_override(values: dict[str, Any], override: str) -> None:
    """Set one ``section.key=value`` in the nested dict ``values`` of a Config."""
    source = f"override '{override}'"
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"{source}: expected key=value, e.g. train.learning_rate=1e-4")
    cls, node, parts = Config, values, key.strip().split(".")
    for depth, name in enumerate(parts):
        hints = get_type_hints(cls)
        if name not in hints:
            raise _unknown_key(cls, name, ".".join(parts[:depth]) + "." if depth else "", source)
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hints[name]):
                raise ConfigError(f"{source}: '{key}' is a section; set one of its keys")
            value = _parse_override(text.strip(), hints[name], key)
            node[name] = _check_value(value, hints[name], key, source)
        elif not dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"{source}: '{'.'.join(parts[: depth + 1])}' has no sub-keys")
        else:
            cls, node = hints[name], node[name]


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dict of a config (tuples become lists), ready for JSON or YAML."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Config from a (partial) nested mapping, checked against the schema."""
    return _build(Config, values, source)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A preset's contents as a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        presets = sorted(str(p) for p in Path("configs").glob("*.yaml"))
        known = f" (presets here: {', '.join(presets)})" if presets else ""
        raise ConfigError(f"config file not found: {path}{known}")
    try:
        with path.open() as stream:  # a stream, so that YAML errors name the file
            values = yaml.load(stream, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML in {path}: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {values!r}")
    return values


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML preset at ``path`` (if any), then ``key.sub=value`` overrides."""
    config = Config() if path is None else config_from_dict(read_yaml(path), source=str(path))
    values = config_to_dict(config)
    for override in overrides:
        _apply_override(values, override)
    return config_from_dict(values, source="overrides")


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as JSON (the file every run folder and export carries)."""
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")


def read_config_json(path: str | Path) -> Config:
    """Read a config written by ``save_config``."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config JSON: {error}") from None
    return config_from_dict(values, source=str(path))


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, loadable again as a preset."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def describe_fields(cls: type = Config, prefix: str = "") -> list[str]:
    """Lines of ``--help`` text: every key with its type, default and documentation."""
    lines, docs, hints = [], field_docs(cls), get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += [f"{key}: {docs.get(f.name, '')}"]
            lines += describe_fields(tp, prefix=f"{key}.")
            continue
        default = getattr(defaults, f.name)
        lines += [
            f"  {key} ({_type_name(tp)}, default {default!r})",
            f"      {docs.get(f.name, '')}",
        ]
    return lines


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Give an entry point ``--config``, ``--print-config`` and ``key.sub=value`` overrides."""
    parser.add_argument("--config", type=Path, help="YAML preset (configs/*.yaml)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit (dry run)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override any config key (below)"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "config keys (set in a preset or as key.sub=value):\n" + "\n".join(
        describe_fields()
    )


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The resolved config of parsed arguments; a bad preset or override exits with its error."""
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as error:
        parser.error(str(error))
