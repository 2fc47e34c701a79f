"""Typed configuration: one dataclass tree, strict YAML presets, dotted command-line overrides.

A run's config is resolved in three layers: the defaults written below (the paper's settings),
a YAML preset (``--config configs/x.yaml``) that may only set known keys, and ``key.sub=value``
overrides from the command line. The resolved config is written as JSON into every run folder
and every export, and loads back to an equal object.

The string under each field is its documentation: ``--help`` prints it. How presets and
overrides are checked lives in ``viewdiff.strict_config``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from viewdiff.sds.config import SdsConfig
from viewdiff.strict_config import ConfigError, apply_override, build, read_yaml

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

    disparity_at_infinity: float = 0.5
    """Inverse depth of the last background sample, which sits at far / this (the reference's
    vol_rend_disparity_at_inf). Configs saved before this key load with 1e-3, the value their
    models were trained with (``LEGACY_DEFAULTS``)."""

    density_noise: float = 0.0
    """Std of Gaussian noise added to the volume renderer's density pre-activation in training
    mode (NeRF's raw_noise_std; evaluation never adds it), drawn from the step's seeded
    generator. The reference's renderer has it (inject_noise_sigma) but its projection layer
    builds the renderer with 0.0: 0 is the paper's training."""

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
    """Side of the square views fed to the model, in pixels (a multiple of 8); shards of larger
    views are decoded down to it (JPEG draft mode, then a resize), smaller ones are refused."""

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

    lr_scheduler: Literal[
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "piecewise_constant",
    ] = "constant_with_warmup"
    """Learning-rate schedule over train.max_steps, by diffusers.optimization.get_scheduler
    (as diffusers' training examples; reference: constant)."""

    lr_warmup_steps: int = 0
    """Linear warm-up steps of the learning rate (diffusers' convention: step 0 runs at 0)."""

    lr_num_cycles: int = 1
    """Hard restarts of cosine_with_restarts."""

    lr_power: float = 1.0
    """Power of the polynomial decay."""

    lr_step_rules: str = ""
    """Rules of piecewise_constant, diffusers' format: "1:10,0.1:20,0.01" (factor:until_step)."""

    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """torch's AdamW, or bitsandbytes' AdamW8bit (optimiser state in 8 bits: a quarter of the
    memory of AdamW's two float32 moments; needs `pip install bitsandbytes`)."""

    adam_beta1: float = 0.9
    """AdamW beta1."""

    adam_beta2: float = 0.999
    """AdamW beta2."""

    adam_weight_decay: float = 1e-2
    """AdamW decoupled weight decay."""

    adam_epsilon: float = 1e-8
    """AdamW epsilon."""

    max_grad_norm: float = 5e-3
    """Gradient clipping by global norm (the reference clips hard); 0 disables it, a negative
    value is an error."""

    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    """Mixed precision of the forward/backward pass; null: what `accelerate launch
    --mixed_precision` or `accelerate config` says ("no" without them), as diffusers' examples.
    A value here overrides accelerate's. The run's config.json records the one used (the
    reference trains in fp32)."""

    report_to: tuple[str, ...] = ("tensorboard",)
    """Experiment trackers through accelerate: tensorboard, wandb, comet_ml, mlflow, aim,
    clearml, dvclive, swanlab, trackio, or all (every installed one); () logs nothing."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (the UNet's blocks and the
    projection layers)."""

    compile_projection_layers: bool = False
    """torch.compile the projection layers (once per layer at the first step: half a minute to
    minutes on a CPU). Inductor's fused CPU kernels are not bit-equal to eager: a tiny layer's
    output moved by up to 3e-3 (on values ~1)."""

    zero_terminal_snr: bool = True
    """Rescale the noise schedule to zero terminal SNR (Lin et al. 2024), as the reference."""

    prompt_dropout: float = 0.2
    """Probability of an empty prompt, for classifier-free guidance (reference: 2 x 0.1)."""

    prompt_dropout_per: Literal["view", "object"] = "view"
    """What one prompt-dropout draw empties: one view's prompt (the reference: each view on its
    own) or all views of an object together (as guidance drops the prompt at sampling). Configs
    saved before this key load with "object", what their models were trained with."""

    image_condition_prob: float = 0.25
    """Probability that each of the first ``image_condition_views`` views is given clean (t=0)."""

    image_condition_views: int = 2
    """How many of the first views may be given clean as image conditions."""

    novel_views: int = 1
    """The last this many views of every object are not lifted into the projection layers'
    grids, only rendered there: supervised as novel views (reference: n_novel_images=1 in
    training; validation and inference lift every view)."""

    prior_shards: str = "data/shards/co3d_prior"
    """Shards of the prior preservation set (DreamBooth, as the reference): the base model's own
    images of the training captions, one view each (data/make_prior_set.py). Every micro-batch
    adds train.batch_size of them at N=1; empty: no prior preservation (configs saved before
    this key load with that, as their models were trained)."""

    prior_weight: float = 0.1
    """Weight of the prior batch's diffusion loss (the reference's
    dreambooth_prior_preservation_loss_weight)."""

    checkpoint_every: int = 500
    """Steps between training checkpoints (checkpoints/checkpoint-<step>/)."""

    checkpoints_keep: int = 2
    """Training checkpoints kept; older ones are deleted."""

    resume: str | None = "latest"
    """Resume from 'latest', from a checkpoint folder, or start fresh with null."""

    allow_world_size_change: bool = False
    """Resume a checkpoint written by another number of ranks (the data order then differs
    from an uninterrupted run); without it such a resume is an error."""

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

    fov_deg: float = 48.0
    """Horizontal field of view of the default orbit's cameras, in degrees."""

    seed: int = 0
    """Seed of the initial noise; the i-th prompt of a run uses seed + i."""


@dataclass(frozen=True)
class Config:
    """A whole run: model, data, training, and the uses of the trained prior."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The base pipeline and the multi-view additions."""

    data: DataConfig = field(default_factory=DataConfig)
    """The posed views and how batches are drawn."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, checkpoints and logging."""

    sample: SampleConfig = field(default_factory=SampleConfig)
    """Generation with the trained prior (infer.py)."""

    sds: SdsConfig = field(default_factory=SdsConfig)
    """Score distillation of a 3D scene with the trained prior (infer.py sds)."""


def prior_data(config: Config) -> DataConfig:
    """The data section of the prior preservation batches: ``train.prior_shards`` at N=1, the
    training's image size and categories."""
    return dataclasses.replace(config.data, shards=config.train.prior_shards, n_views=1)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dict of a config (tuples become lists), ready for JSON or YAML."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Config from a (partial) nested mapping, checked against the schema."""
    return build(Config, values, source)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML preset at ``path`` (if any), then ``key.sub=value`` overrides."""
    config = Config() if path is None else config_from_dict(read_yaml(path), source=str(path))
    values = config_to_dict(config)
    for override in overrides:
        apply_override(Config, values, override)
    return config_from_dict(values, source="overrides")


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as JSON (the file every run folder and export carries)."""
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")


LEGACY_DEFAULTS = {
    ("model", "disparity_at_infinity"): 1e-3,
    ("train", "novel_views"): 0,
    ("train", "prompt_dropout_per"): "object",
    ("train", "prior_shards"): "",
}
"""Keys added after models were trained and saved: a saved config without one gets the value
those models were built with, not today's default (so an old export loads as it trained)."""


def with_legacy_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config's sections with ``LEGACY_DEFAULTS`` filled in where the keys are absent."""
    filled = {name: dict(section) if isinstance(section, Mapping) else section
              for name, section in values.items()}  # fmt: skip
    for (section, key), value in LEGACY_DEFAULTS.items():
        if isinstance(filled.get(section), dict):
            filled[section].setdefault(key, value)
    return filled


def read_config_json(path: str | Path) -> Config:
    """Read a config written by ``save_config`` (an older one with ``LEGACY_DEFAULTS``)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config JSON: {error}") from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a JSON object of config sections")
    return config_from_dict(with_legacy_defaults(values), source=str(path))


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, loadable again as a preset."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
