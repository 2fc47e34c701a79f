"""The ``train:`` section of the config tree: the optimisation, checkpoints and logging of
``train.py``, and its one value check (``TrainConfig.check``).

Kept apart from the other sections (as ``viewdiff.sds.config``) so that ``viewdiff.config``
includes it without importing the training machinery; import it from ``viewdiff.config``. What
depends on the machine (mixed precision, installed trackers, bitsandbytes) or on diffusers (the
learning-rate schedule) is checked by ``viewdiff.training.preflight``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from viewdiff.strict_config import ConfigError, check_ranges


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

    loss_views: Literal["all", "generated"] = "all"
    """Which views the diffusion loss averages over: ``all`` N (the reference, train.py:573-578:
    MSE over every view, the targets of views given clean set to the detached prediction, so
    that they add nothing but the count) or only the ``generated`` (noised) ones (configs saved
    before this key; ``LEGACY_DEFAULTS``)."""

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

    def check(self) -> None:
        """Refuse values that cannot train, naming the key (a ``ConfigError``)."""
        check_ranges(self, "train.", {
            "max_steps": "at least 1", "batch_size": "at least 1",
            "gradient_accumulation_steps": "at least 1", "checkpoint_every": "at least 1",
            "checkpoints_keep": "at least 1", "log_every": "at least 1",
            "validate_every": ">= 0", "export_every": ">= 0", "lr_warmup_steps": ">= 0",
            "image_condition_views": ">= 0",
            "prompt_dropout": "in [0, 1]", "image_condition_prob": "in [0, 1]",
            "prior_weight": "finite and >= 0",
            # A negative learning rate trains backwards to the end.
            "learning_rate": "finite and positive", "renderer_learning_rate": "finite and positive",
            "adam_epsilon": "finite and positive",
            "adam_weight_decay": "finite and non-negative",
            "renderer_weight_decay": "finite and non-negative",
            "adam_beta1": "finite and in [0, 1)", "adam_beta2": "finite and in [0, 1)",
            "validation_guidance_scale": "finite and non-negative",
            "ema_decay": "in [0, 1)",
        })  # fmt: skip
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ConfigError(
                "train.max_grad_norm must be finite and non-negative (0 turns clipping off), "
                f"got {self.max_grad_norm}"
            )
        if self.validate_every and self.validation_inference_steps < 1:
            raise ConfigError("train.validation_inference_steps must be at least 1")
        if self.lr_num_cycles < 1 or not self.lr_power > 0:
            raise ConfigError(
                f"train.lr_num_cycles must be >= 1 and train.lr_power > 0, got "
                f"{self.lr_num_cycles} and {self.lr_power}"
            )
