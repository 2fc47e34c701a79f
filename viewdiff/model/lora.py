"""Pose-conditioned LoRA: low-rank updates of an attention's projections that also see the camera.

ViewDiff (Sec. 3.2) conditions the UNet on each view's camera by adding a LoRA to the
to_q/to_k/to_v/to_out projections whose input is the projection's input concatenated with a
per-view condition vector: the 10-d pose feature of ``viewdiff.cameras.pose_features`` and, for
self-attention (attn1), a small projection of the UNet's time embedding. The up-projections start
at zero (as diffusers' LoRALinearLayer), so that the augmented UNet starts as the base UNet.

These modules only hold weights; ``viewdiff.model.attention`` applies them inside the processor.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """Low-rank update ``up(down(x))`` of a linear layer, with ``up`` initialised to zero."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        # diffusers' LoRALinearLayer initialisation: a random down, a zero up (no update at start).
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        """The update (..., out_features) for inputs (..., in_features), in the input's dtype."""
        return self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype)


class PoseLoRA(nn.Module):
    """The pose-conditioned LoRA of one attention layer (to_q, to_k, to_v and to_out).

    q sees [hidden, condition], k/v see [keys' input, condition], out sees the attention output
    only (the reference's to_out_lora). The condition is the pose feature, followed for attn1 by
    ``timestep_proj`` of the UNet's time embedding (reference: one projection per layer).
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        inner_dim: int,
        pose_dim: int,
        rank: int,
        temb_dim: int | None = None,
        timestep_dim: int = 0,
    ) -> None:
        super().__init__()
        condition_dim = pose_dim
        self.timestep_proj: nn.Sequential | None = None
        if temb_dim is not None and timestep_dim > 0:
            # Reference (CrossFrameAttentionProcessor2_0.temb_proj): T -> T/2 -> 8, ELU after each.
            self.timestep_proj = nn.Sequential(
                nn.Linear(temb_dim, temb_dim // 2),
                nn.ELU(),
                nn.Linear(temb_dim // 2, timestep_dim),
                nn.ELU(),
            )
            condition_dim += timestep_dim
        self.pose_dim = pose_dim
        self.to_q = LoRALinear(query_dim + condition_dim, inner_dim, rank)
        self.to_k = LoRALinear(key_dim + condition_dim, inner_dim, rank)
        self.to_v = LoRALinear(key_dim + condition_dim, inner_dim, rank)
        self.to_out = LoRALinear(inner_dim, query_dim, rank)

    def condition(self, pose: Tensor, temb: Tensor | None) -> Tensor:
        """Per-view condition vector (B*N, D_c): the pose feature [+ the timestep projection]."""
        if pose.shape[-1] != self.pose_dim:
            raise ValueError(
                f"pose-conditioned LoRA expects pose features of width {self.pose_dim}, "
                f"got shape {tuple(pose.shape)}"
            )
        parts = [pose]
        if self.timestep_proj is not None:
            if temb is None:
                raise ValueError("attn1's pose LoRA needs the UNet's time embedding (temb)")
            weight_dtype = next(self.timestep_proj.parameters()).dtype  # its first Linear's
            parts.append(self.timestep_proj(temb.to(weight_dtype)).to(pose.dtype))
        return torch.cat(parts, dim=-1)


def with_condition(tokens: Tensor, condition: Tensor) -> Tensor:
    """Tokens (B*N, L, D) with the per-view condition (B*N, D_c) appended to every token."""
    expanded = condition.to(tokens.dtype)[:, None, :].expand(-1, tokens.shape[1], -1)
    return torch.cat([tokens, expanded], dim=-1)
