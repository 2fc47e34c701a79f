"""AdamW over named parameter groups, and the learning-rate schedule (diffusers' schedules).

``train.optimizer=adamw8bit`` takes bitsandbytes' AdamW8bit (block-wise 8-bit moments, Dettmers et
al. 2022) with the same groups and settings; its state checkpoints and resumes like AdamW's.

Groups (the reference's two learning rates): 'unet' (base weights or their peft LoRA) and
'added' (pose LoRA, projection layers) at ``train.learning_rate`` with ``train.adam_weight_decay``;
'renderer' (the volume renderers' field: MLP, density and feature heads) at
``train.renderer_learning_rate`` with ``train.renderer_weight_decay`` (0 by default).

The ray-direction encoders train in 'added', as the reference trains its ``linear_ray``
(``MultiViewUNet.renderer_parameters`` says where that is read).

The schedule is a pure function of the step (diffusers' lambda, no scheduler state): a resumed
run sets the same learning rates without any saved schedule state, and the rate never depends
on how many processes step it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from diffusers.optimization import get_scheduler
from torch import nn

from viewdiff.config import TrainConfig
from viewdiff.model import MultiViewUNet


def parameter_groups(model: MultiViewUNet, train: TrainConfig) -> list[dict]:
    """AdamW groups of the trained parameters, named, with their base learning rates."""
    settings = {
        "unet": (train.learning_rate, train.adam_weight_decay),
        "added": (train.learning_rate, train.adam_weight_decay),
        "renderer": (train.renderer_learning_rate, train.renderer_weight_decay),
    }
    groups = []
    for name, params in model.parameter_groups().items():
        trained = [p for p in params if p.requires_grad]
        if trained:
            lr, weight_decay = settings[name]
            groups.append(
                {
                    "name": name,
                    "params": trained,
                    "lr": lr,
                    "base_lr": lr,
                    "weight_decay": weight_decay,
                }
            )
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient")
    return groups


def build_optimizer(groups: list[dict], train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (train.optimizer: torch's, or bitsandbytes' 8-bit) with the config's betas and
    epsilon over the given groups."""
    betas, eps = (train.adam_beta1, train.adam_beta2), train.adam_epsilon
    if train.optimizer == "adamw8bit":
        import bitsandbytes  # optional: preflight checked that it is installed

        return bitsandbytes.optim.AdamW8bit(groups, betas=betas, eps=eps)
    return torch.optim.AdamW(groups, betas=betas, eps=eps)


@functools.lru_cache(maxsize=8)
def learning_rate_schedule(train: TrainConfig) -> Callable[[int], float]:
    """The factor of the base learning rates at each (0-based) optimiser step, from diffusers'
    ``get_scheduler`` (its lambda only: a pure function of the step)."""
    # The lambda reads the optimiser's default lr once (polynomial: lr_end is absolute), so a
    # stand-in optimiser at the main learning rate gives every group the same factor.
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train.learning_rate)
    scheduler = get_scheduler(
        train.lr_scheduler,
        stand_in,
        step_rules=train.lr_step_rules or None,
        num_warmup_steps=train.lr_warmup_steps,
        num_training_steps=train.max_steps,
        num_cycles=train.lr_num_cycles,
        power=train.lr_power,
    )
    return scheduler.lr_lambdas[0]


def set_learning_rates(optimizer: torch.optim.Optimizer, step: int, train: TrainConfig) -> None:
    """Set every group's learning rate for ``step``."""
    factor = learning_rate_schedule(train)(step)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate per named group."""
    return {
        group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)
    }


def trained_parameters(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """Every parameter the optimiser updates (for clipping)."""
    return [p for group in optimizer.param_groups for p in group["params"]]
