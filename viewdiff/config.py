"""Typed configuration: one dataclass tree, strict YAML presets, dotted command-line overrides.

A run's config is resolved in three layers: the defaults written below (the paper's settings),
a YAML preset (``--config configs/x.yaml``) that may only set known keys, and ``key.sub=value``
overrides from the command line. The resolved config is written as JSON into every run folder
and every export, and loads back to an equal object.

The string under each field is its documentation: ``--help`` prints it. Every section checks its
own values in one place, its ``check()`` method (``Config.check`` runs them all, and the checks
between sections): loading a preset, an override, a saved JSON or a command's flags ends there,
so a bad value fails the same way from each. How presets and overrides are read and typed lives
in ``viewdiff.strict_config``; the ``train:`` and ``sds:`` sections live in
``viewdiff.training.config`` and ``viewdiff.sds.config``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from viewdiff.sds.config import SdsConfig, nest_flat_fit_keys
from viewdiff.strict_config import ConfigError, apply_override, build, check_ranges, read_yaml
from viewdiff.training.config import TrainConfig

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

    density_noise: float = 1.0
    """Std of Gaussian noise added to the volume renderer's density pre-activation in training
    mode (NeRF's raw_noise_std; evaluation never adds it), drawn from the step's seeded
    generator. The reference's projection layer builds its renderer with 0.0 (layer.py:174), but
    its train loop sets 1.0 before every training epoch and 0.0 for validation
    (train.py:252, :199; model/util.py:332 update_vol_rend_inject_noise_sigma) and testing
    (test.py:581): the paper trains with 1.0. Configs saved before the default was 1.0 trained
    without noise unless they said so (``LEGACY_DEFAULTS``)."""

    opacity_init_bias: float = -5.0
    """Initial bias of the volume renderer's density head (before its softplus): the reference's
    -5 (fastplane_module.py:56, :96; layer.py never sets it) starts the grid almost transparent,
    softplus(-5) ~ 0.007. Only a newly built model reads it; trained weights replace it."""

    voxel_unet: Literal["reference", "compact"] = "reference"
    """The projection layer's 3D UNet. ``reference``: the reference's UNet3D (layer.py:74-88,
    custom_unet_3d.py), two levels of [C, 2C] channels whose up blocks have layers_per_block + 1
    resnets, every down resnet's output a skip. ``compact``: the one exports saved before this key
    were trained with (fewer resnets and skips; ``LEGACY_DEFAULTS``)."""

    ray_directions: Literal["unnormalised", "normalised"] = "unnormalised"
    """What the renderer's ray-direction encoder sees: the rays as the camera casts them through
    the pixels, ``unnormalised`` (the reference, layer.py:330), or unit vectors, ``normalised``
    (exports saved before this key; ``LEGACY_DEFAULTS``)."""

    projection_merge: Literal["replace", "residual"] = "replace"
    """Where the projection layer sits and how its output joins the UNet. ``replace``: inside
    every ``BasicTransformerBlock`` of ``projection_blocks``, between cross-attention and the
    feed-forward, on a new LayerNorm of the features, its output *replacing* them (the
    reference's ``last_layer_mode no_residual_connection``, custom_attention.py:443-495).
    ``residual``: after each whole transformer, its output *added* (exports saved before this
    key; ``LEGACY_DEFAULTS``)."""

    projection_in: Literal["multiple", "single"] = "multiple"
    """Features C -> C' before unprojection (the reference's proj_in_2d, layer.py:97-102):
    ``multiple`` conv3x3 C->C + ReLU, conv3x3 C->C' + ReLU, conv1x1 C'->C'; ``single`` one
    conv1x1 C->C' (exports saved before this key; ``LEGACY_DEFAULTS``)."""

    projection_out: Literal["multiple", "single", "zero"] = "multiple"
    """Rendered C' -> C (the reference's proj_out_2d_fg/bg, layer.py:130-145): ``multiple`` a
    foreground and a background stack conv1x1 C'->C' + ReLU, C'->C + ReLU, C->C, blended by the
    rendered opacity m as m fg + (1 - m) bg; ``single`` the same blend of two conv1x1 C'->C;
    ``zero`` [features, opacity] -> C' -> SiLU -> C with its last conv zero, a residual that
    starts at nothing (exports saved before this key; ``LEGACY_DEFAULTS``)."""

    normalise_rendered: bool = False
    """Normalise each view's rendered features over its pixels (per channel, no parameters)
    before the output stacks. Not the reference's. Its renderer starts from an almost empty grid
    (opacity ~0.1 over a background of ones), so its features are nearly constant and a newly
    built layer outputs nearly one vector whatever the cameras; normalised, the output varies
    with them from the first step (``viewdiff.toy.projection_activity``'s ``camera``). That
    variation follows each view's own rays: what the other views give (``placement``) stays
    ~0.1% on the toy world (docs/toy-world.md, "Does the prior use the cameras?")."""

    voxel_grid_by_width: bool = True
    """Scale each layer's grid inversely with its channel width, G * C_widest / C (the
    reference's dim_3d_grid // scale, custom_attention.py:165-172), so ``voxel_grid_size`` is
    the grid at the widest stage; off, every layer has ``voxel_grid_size`` (exports saved before
    this key; ``LEGACY_DEFAULTS``)."""

    projection_checkpointing: bool = False
    """Recompute the projection layers' activations in the backward pass (saves memory)."""

    base_lora_rank: int = 16
    """Rank of the peft LoRA on the base UNet's to_q/to_k/to_v/to_out.0 (train.mode=lora)."""

    attention_backend: Literal["sdpa", "xformers"] = "sdpa"
    """Kernel of cross-frame attention: torch SDPA (everywhere) or xformers (CUDA only)."""

    def check(self) -> None:
        """Refuse settings of the UNet's additions that cannot build, naming the key."""
        if self.pose_lora and self.pose_lora_rank < 1:
            raise ConfigError(f"model.pose_lora_rank must be at least 1, got {self.pose_lora_rank}")
        check_ranges(self, "model.", {"pose_timestep_dim": ">= 0", "base_lora_rank": "at least 1",
                                      "density_noise": "finite and >= 0",
                                      "opacity_init_bias": "finite"})  # fmt: skip
        if self.attention_backend not in ("sdpa", "xformers"):
            raise ConfigError(f"model.attention_backend: unknown {self.attention_backend!r}")
        if not self.projection_layers:
            return
        check_ranges(self, "model.", {"projection_channels": "at least 1",
                                      "render_samples": "at least 1"})  # fmt: skip
        if self.voxel_grid_size < 2 or self.voxel_grid_size % 2:
            raise ConfigError(
                f"model.voxel_grid_size must be even and >= 2, got {self.voxel_grid_size}"
            )
        for key, allowed in (("projection_merge", ("replace", "residual")),
                             ("projection_in", ("multiple", "single")),
                             ("projection_out", ("multiple", "single", "zero"))):  # fmt: skip
            if getattr(self, key) not in allowed:
                raise ConfigError(f"model.{key}: unknown {getattr(self, key)!r}; one of {allowed}")
        if self.projection_merge == "replace" and self.projection_out == "zero":
            raise ConfigError(
                "model.projection_out: zero starts at nothing, which with "
                "model.projection_merge: replace would erase the block's features; use "
                "multiple or single (or projection_merge: residual)"
            )
        if not 0 < self.disparity_at_infinity < 1:
            raise ConfigError(
                f"model.disparity_at_infinity must be in (0, 1), got {self.disparity_at_infinity}"
            )


@dataclass(frozen=True)
class DataConfig:
    """Where posed views come from and how batches are drawn."""

    shards: str = "data/shards/co3d"
    """Shard folder (with its manifest) or any webdataset URL/brace pattern, e.g. pipe:..."""

    categories: tuple[str, ...] = ()
    """CO3D categories to train on; empty means every category in the shards."""

    image_size: int = 256
    """Side of the square views fed to the model, in pixels (a multiple of 8); shards of larger
    views (full frames: a larger short side) are decoded down to it, smaller ones are refused."""

    n_views: int = 5
    """N: views of one object per sample, denoised jointly."""

    view_sampling: Literal["random", "spread", "mix"] = "random"
    """How N views are drawn from a sequence: uniformly at random, spread around it, or the
    reference's ``mix`` (``other_selection: mix``, train.sh): half the samples N random frames,
    half a run of frames a random offset 0 .. 4 apart (``viewdiff.data.stream_views``)."""

    num_workers: int = 4
    """DataLoader worker processes per rank."""

    shuffle_buffer: int = 500
    """Samples held in webdataset's shuffle buffer."""

    crop: Literal["random_square", "object"] = "random_square"
    """How a view is cut from its frame. ``random_square``: the reference's ``batch.crop
    random`` (train.sh; co3d_dataset.py:831-846, util.py:113-123): a square of side min(H, W)
    at a random offset in the whole frame, drawn per view (torchvision's RandomCrop.get_params:
    every offset equally likely), the principal point shifted by it (co3d_dataset.py:457-463);
    the object stays small and off-centre. Needs full-frame shards (``prepare_co3d.py --crop
    full``). ``object``: a square around the object, 10% margin per side, cut when the shards
    were written (``prepare_co3d.py --crop object``; configs saved before this key,
    ``LEGACY_DEFAULTS``). Shards of the other kind are refused."""

    caption_fallback: Literal["empty", "category"] = "empty"
    """Prompt of a sequence without captions: ``empty`` "" (the reference's get_blip_prompt,
    co3d_dataset.py:719-728) or ``category`` "a <category>" (configs saved before this key,
    ``LEGACY_DEFAULTS``). A sequence with captions gets one of them at random."""

    def check(self) -> None:
        """Refuse batch shapes that cannot be drawn, naming the key."""
        check_ranges(self, "data.", {"n_views": "at least 1", "num_workers": ">= 0",
                                     "shuffle_buffer": ">= 0"})  # fmt: skip
        for key, allowed in (("crop", ("random_square", "object")),
                             ("caption_fallback", ("empty", "category"))):  # fmt: skip
            if getattr(self, key) not in allowed:
                raise ConfigError(f"data.{key}: unknown {getattr(self, key)!r}; one of {allowed}")
        if self.image_size < 8 or self.image_size % 8:
            raise ConfigError(
                f"data.image_size must be a positive multiple of 8 (the VAE), got {self.image_size}"
            )


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

    def check(self) -> None:
        """Refuse sampler settings that cannot run, naming the key."""
        check_ranges(self, "sample.", {
            "num_inference_steps": "at least 1", "window_views": "at least 1",
            "max_conditions": ">= 0",
            # NaN guidance would render black views.
            "guidance_scale": "finite and >= 0", "image_guidance_scale": "finite and >= 0",
            "radius": "finite and positive", "fov_deg": "finite and positive",
            "elevation_deg": "finite",
        })  # fmt: skip


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

    def check(self) -> None:
        """Every section's check, then the checks between sections."""
        for section in (self.model, self.data, self.train, self.sample, self.sds):
            section.check()
        novel, n_views = self.train.novel_views, self.data.n_views
        if not 0 <= novel < n_views:
            raise ConfigError(
                f"train.novel_views must be in [0, data.n_views={n_views}): at least one view "
                f"must be lifted into the grid, got {novel}"
            )


def check_config(config: Config, source: str) -> None:
    """``Config.check``, its error naming ``source`` (the file, "overrides", "flags")."""
    try:
        config.check()
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def prior_data(config: Config) -> DataConfig:
    """The data section of the prior preservation batches: ``train.prior_shards`` at N=1, the
    training's image size and categories."""
    return dataclasses.replace(config.data, shards=config.train.prior_shards, n_views=1)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dict of a config (tuples become lists), ready for JSON or YAML."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Config from a (partial) nested mapping, checked against the schema and its ranges."""
    config = build(Config, values, source)
    check_config(config, source)
    return config


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: Config | None = None
) -> Config:
    """Defaults (or ``base``), then the YAML preset at ``path`` (if any, instead of ``base``),
    then ``key.sub=value`` overrides."""
    if path is not None:
        config = config_from_dict(read_yaml(path), source=str(path))
    else:
        config = Config() if base is None else base
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
    ("model", "density_noise"): 0.0,
    ("model", "voxel_unet"): "compact",
    ("model", "ray_directions"): "normalised",
    ("train", "loss_views"): "generated",
    ("model", "projection_merge"): "residual",
    ("model", "projection_in"): "single",
    ("model", "projection_out"): "zero",
    ("model", "voxel_grid_by_width"): False,
    ("data", "crop"): "object",
    ("data", "caption_fallback"): "category",
}
"""Keys added after models were trained and saved: a saved config without one gets the value
those models were built with, not today's default (so an old export loads as it trained)."""


def legacy_values(section: str) -> dict[str, Any]:
    """``LEGACY_DEFAULTS`` of one section: what configs saved before those keys were built with."""
    return {key: value for (name, key), value in LEGACY_DEFAULTS.items() if name == section}


def with_legacy_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config's sections with ``LEGACY_DEFAULTS`` filled in where the keys are absent,
    and the keys moved since into their place (``sds.feature_lr`` is now ``sds.fit.feature_lr``)."""
    filled = {name: dict(section) if isinstance(section, Mapping) else section
              for name, section in values.items()}  # fmt: skip
    for (section, key), value in LEGACY_DEFAULTS.items():
        if isinstance(filled.get(section), dict):
            filled[section].setdefault(key, value)
    if isinstance(filled.get("sds"), dict):
        filled["sds"] = nest_flat_fit_keys(filled["sds"])
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
