"""A transformer block whose features pass through a projection layer (``replace`` merge).

The reference ViewDiff puts its projection layer inside diffusers' ``BasicTransformerBlock``,
between cross-attention and the feed-forward, and lets its output *replace* the features
(custom_attention.py:443-495: step 3 with ``use_unproj_reproj`` and no cross-frame attention
there, which train.sh's ``mode pretrained`` + ``unproj_reproj_mode with_cfa`` becomes in
train.py:385-389; ``last_layer_mode no_residual_connection`` at :483-484):

    h = h + attn1(norm1(h))           # self-attention (ours: cross-frame, pose LoRA)
    h = h + attn2(norm2(h))           # cross-attention (ours: pose LoRA)
    h = projection(norm_cf(h))        # unproject, aggregate, 3D UNet, render: replaces h
    h = h + ff(norm3(h))

So every feature of the block passes through the 3D volume from the first step. Installed by
``install_projection``: the block keeps its diffusers module and parameter names (its class
becomes this subclass, which only overrides ``forward``); the projection layer and its
``norm_cf`` live outside the base UNet (``MultiViewUNet.projection_layers``), reached through a
plain callable, so the base UNet's state dict is diffusers' own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers.models.attention import BasicTransformerBlock
from torch import Tensor

# (hidden_states (B*N, h*w, C), cross_attention_kwargs) -> new hidden_states (B*N, h*w, C)
BlockProjection = Callable[[Tensor, dict[str, Any]], Tensor]


class ProjectedTransformerBlock(BasicTransformerBlock):
    """``BasicTransformerBlock`` (layer_norm type, as SD's) with the projection replacing h."""

    projection: BlockProjection

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        timestep: Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: Tensor | None = None,
        added_cond_kwargs: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Self-attention, cross-attention, projection (replacing h), feed-forward."""
        if self._chunk_size is not None:
            raise ValueError(
                "feed-forward chunking is not supported in a block with a projection layer "
                "(model.projection_merge: replace); call unet.disable_forward_chunking()"
            )
        kwargs = dict(cross_attention_kwargs or {})
        h = hidden_states
        h = h + self.attn1(
            self.norm1(h),
            encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
            attention_mask=attention_mask,
            **kwargs,
        )
        if self.attn2 is not None:
            h = h + self.attn2(
                self.norm2(h),
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                **kwargs,
            )
        h = self.projection(h, kwargs)
        return h + self.ff(self.norm3(h))


def install_projection(
    block: BasicTransformerBlock, projection: BlockProjection, name: str
) -> None:
    """Make ``block`` (named ``name``) a ``ProjectedTransformerBlock`` calling ``projection``."""
    unsupported = []
    if type(block) is not BasicTransformerBlock:
        unsupported.append(f"class {type(block).__name__}")
    if getattr(block, "norm_type", None) != "layer_norm":
        unsupported.append(f"norm_type {getattr(block, 'norm_type', None)!r}")
    if getattr(block, "pos_embed", None) is not None:
        unsupported.append("positional embeddings")
    if hasattr(block, "fuser"):
        unsupported.append("GLIGEN")
    if unsupported:
        raise ValueError(
            f"model.projection_merge: replace puts the projection layer inside diffusers' "
            f"BasicTransformerBlock with layer_norm (as SD 1.x/2.x); {name} has "
            f"{', '.join(unsupported)}; use model.projection_merge: residual"
        )
    block.__class__ = ProjectedTransformerBlock
    block.projection = projection
