"""What trains (``train.mode``) and how the multi-view model is built for training.

- ``full``: every UNet weight and the added layers (the reference);
- ``lora``: a peft LoRA on the base UNet's to_q/to_k/to_v/to_out.0 (rank
  ``model.base_lora_rank``) and the added layers; the base weights stay frozen;
- ``new_layers``: only the added layers (pose LoRA, projection layers).

Frozen weights may be held in the mixed-precision dtype (they need no fp32 master copy);
trained ones stay float32 for the optimiser.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from viewdiff.config import ModelConfig
from viewdiff.model import MultiViewUNet, add_base_lora
from viewdiff.prior.export import EXPORT_UNET_WEIGHTS

# train.mixed_precision -> the dtype frozen weights are held and computed in.
COMPUTE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEFT_LORA_MARK = "lora_"  # peft's LoRA parameters: ...to_q.lora_A.default.weight


def build_training_model(
    unet: UNet2DConditionModel, model_config: ModelConfig, mode: str, gradient_checkpointing: bool
) -> MultiViewUNet:
    """The multi-view UNet around ``unet`` with the trainable parameters of ``mode`` set."""
    if mode not in EXPORT_UNET_WEIGHTS:
        raise ValueError(
            f"train.mode: unknown {mode!r}; expected one of {list(EXPORT_UNET_WEIGHTS)}"
        )
    if mode == "lora":
        add_base_lora(unet, model_config.base_lora_rank)  # before the processors are set
    if gradient_checkpointing:
        # Recompute activations in backward: the UNet's blocks and the projection layers.
        unet.enable_gradient_checkpointing()
        model_config = dataclasses.replace(model_config, projection_checkpointing=True)
    model = MultiViewUNet(unet, model_config)
    set_trainable(model, mode)
    return model


def set_trainable(model: MultiViewUNet, mode: str) -> None:
    """requires_grad on exactly the parameters that ``mode`` trains."""
    model.requires_grad_(False)
    model.attention_layers.requires_grad_(True)
    model.projection_layers.requires_grad_(True)
    if mode == "full":
        model.unet.requires_grad_(True)
    elif mode == "lora":
        for name, p in model.unet.named_parameters():
            p.requires_grad_(PEFT_LORA_MARK in name)


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything that trains, in module order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Hold the frozen parameters in ``dtype`` (memory); trained ones keep theirs."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(dtype)
