"""AdamW over named parameter groups, and the learning-rate schedule (linear warm-up, constant).

Groups (the reference's two learning rates): 'unet' (base weights or their peft LoRA) and
'added' (pose LoRA, projection layers) at ``train.learning_rate``; 'renderer' (the projection
layers' volume renderers) at ``train.renderer_learning_rate`` without weight decay by default.

The schedule is a pure function of the step (no scheduler object): a resumed run sets the same
learning rates without any saved schedule state, and the rate never depends on how many
processes step it.
"""

from __future__ import annotations

import torch
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


def build_optimizer(groups: list[dict], train: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the config's betas and epsilon over the given groups."""
    return torch.optim.AdamW(
        groups, betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_epsilon
    )


def learning_rate_factor(step: int, warmup_steps: int) -> float:
    """Factor of the base learning rate at (0-based) ``step``: linear warm-up, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def set_learning_rates(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """Set every group's learning rate for ``step``."""
    factor = learning_rate_factor(step, warmup_steps)
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
