"""Multi-view attention: cross-frame self-attention and the pose-conditioned LoRA, as a processor.

ViewDiff (Sec. 3.1) turns every self-attention (attn1) of the UNet into cross-frame attention:
the keys and values come from all N views of the object (the query's own view included), the
queries stay per view; with N = 1 it is exactly self-attention. Every attn1 and attn2 also gets
the pose-conditioned LoRA of ``viewdiff.model.lora`` (Sec. 3.2).

How the per-call condition reaches the processors: diffusers' ``Attention.forward`` hands its
processor those ``cross_attention_kwargs`` that the processor's ``__call__`` names (and warns
about the others). ``MultiViewAttnProcessor.__call__`` names one, ``multiview``, so the UNet is
called with ``cross_attention_kwargs={"multiview": MultiViewCondition(...)}`` and diffusers passes
it, unchanged, through every block to every attention, also into the recomputation under gradient
checkpointing. No global state, no warning, no diffusers file touched.

The processors are plain objects, not modules: their LoRA weights live in ``MultiViewUNet``'s own
module tree, so that the UNet's state dict (and its ``save_pretrained``) stays exactly diffusers'.
Never call ``enable_xformers_memory_efficient_attention`` on the UNet, it would replace these
processors; xformers is offered here instead (``ModelConfig.attention_backend``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor

from viewdiff.model.lora import PoseLoRA, with_condition

if TYPE_CHECKING:
    from viewdiff.model.attention_control import AttentionControl

AttentionBackend = Literal["sdpa", "xformers"]


@dataclass(frozen=True)
class MultiViewCondition:
    """Everything the multi-view layers need besides the hidden states, for one UNet call.

    Rows follow the latents: the N views of object b are rows b*N .. b*N+N-1.
    """

    n_views: int
    """N: views per object."""
    pose: Tensor
    """(B*N, 10) per-view pose features (``viewdiff.cameras.pose_features``)."""
    temb: Tensor
    """(B*N, T) the UNet's time embedding of every view's timestep."""
    timesteps: Tensor
    """(B*N,) every view's diffusion timestep."""
    K: Tensor
    """(B*N, 3, 3) intrinsics in pixels of an image of size ``image_size_hw``."""
    w2c: Tensor
    """(B*N, 4, 4) OpenCV world-to-camera in the normalised scene (object box [-1, 1]^3)."""
    image_size_hw: tuple[int, int]
    """(H, W) of the images that ``K`` refers to."""
    latent_hw: tuple[int, int] | None = None
    """(h, w) of the UNet's input latents: the projection layers inside transformer blocks find
    their token grids' sizes from it (None: square token grids)."""
    unprojected: Tensor | None = None
    """(B*N,) bool: views lifted into the projection layers' grids (None: all)."""
    control: AttentionControl | None = None
    """TrAME's attention control of this call (``viewdiff.trame.attention_control``)."""
    noise_generator: torch.Generator | None = None
    """Draws the projection layers' density noise in training mode (None: torch's global RNG)."""
    density_noise: dict[str, Tensor] = field(default_factory=dict)
    """The density noise each projection layer drew in this call, by its key: a block that
    gradient checkpointing recomputes finds its noise here instead of drawing other noise."""


class MultiViewAttnProcessor:
    """diffusers attention processor with cross-frame attention and pose-conditioned LoRA.

    ``cross_frame`` applies to self-attention only; ``lora`` may be None. With neither it
    computes exactly what diffusers' ``AttnProcessor2_0`` computes.
    """

    def __init__(
        self,
        cross_frame: bool,
        lora: PoseLoRA | None = None,
        backend: AttentionBackend = "sdpa",
    ) -> None:
        if backend not in ("sdpa", "xformers"):
            raise ValueError(
                f"unknown attention backend {backend!r}; expected 'sdpa' or 'xformers'"
            )
        self.cross_frame = cross_frame
        self.lora = lora
        self.backend = backend

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        multiview: MultiViewCondition | None = None,
    ) -> Tensor:
        """Attention of ``attn`` on hidden states (B*N, L, C) or (B*N, C, h, w)."""
        if multiview is None and (self.cross_frame or self.lora is not None):
            raise ValueError(
                "multi-view attention needs cross_attention_kwargs={'multiview': "
                "MultiViewCondition(...)}; call MultiViewUNet, not the wrapped UNet"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_self_attention = encoder_hidden_states is None
        batch_size, sequence_length, _ = (
            hidden_states if encoder_hidden_states is None else encoder_hidden_states
        ).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sequence_length, batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:  # self-attention
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query, key, value = self._project_qkv(attn, hidden_states, encoder_hidden_states, multiview)
        n_views = 1
        if self.cross_frame and is_self_attention:
            assert multiview is not None  # refused above
            n_views = multiview.n_views
        control = None if multiview is None else multiview.control
        if control is not None and is_self_attention and control.inject_self:
            query, key = control.borrow_rows(query), control.borrow_rows(key)
        if control is not None and is_self_attention and control.propagate_first:
            key, value = control.from_first_view(key), control.from_first_view(value)
        if control is not None and not is_self_attention and control.explicit_cross:
            if attention_mask is not None:
                raise ValueError("attention control does not support a cross-attention mask")
            hidden_states = control.cross_attend(query, key, value, attn.heads)
        else:
            hidden_states = self._attend(attn, query, key, value, attention_mask, n_views)

        out = attn.to_out[0](hidden_states)
        if self.lora is not None:
            out = out + self.lora.to_out(hidden_states)  # the reference: out sees the output only
        hidden_states = attn.to_out[1](out)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _project_qkv(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        multiview: MultiViewCondition | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """to_q/to_k/to_v (B*N, L, inner), plus the pose LoRA whose input carries the condition."""
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        if self.lora is not None:
            assert multiview is not None  # __call__ refuses a LoRA without it
            if multiview.pose.shape[0] != hidden_states.shape[0]:
                raise ValueError(
                    f"pose features have {multiview.pose.shape[0]} rows but the attention sees "
                    f"{hidden_states.shape[0]} views"
                )
            condition = self.lora.condition(multiview.pose, multiview.temb)
            query = query + self.lora.to_q(with_condition(hidden_states, condition))
            keys_input = with_condition(encoder_hidden_states, condition)
            key = key + self.lora.to_k(keys_input)
            value = value + self.lora.to_v(keys_input)
        return query, key, value

    def _attend(
        self,
        attn: Attention,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        n_views: int,
    ) -> Tensor:
        """Multi-head attention (B*N, L, inner); with n_views > 1 across the views of an object."""
        rows, length, inner_dim = query.shape
        if rows % n_views:
            raise ValueError(
                f"cross-frame attention: {rows} rows are not whole objects of {n_views} views"
            )
        if n_views > 1 and attention_mask is not None:
            raise ValueError("cross-frame attention does not support a self-attention mask")
        heads, head_dim = attn.heads, inner_dim // attn.heads
        # Cross-frame attention (ViewDiff Sec. 3.1) as one fused call: the N*L tokens of an object
        # form one sequence, so that every query attends to the keys of all N views. This is the
        # reference's per-view queries over concatenated keys, without repeating the keys N times.
        objects = rows // n_views

        def split_heads(x: Tensor) -> Tensor:  # (B*N, L', inner) -> (B, heads, N*L', head_dim)
            return x.reshape(objects, -1, heads, head_dim).transpose(1, 2)

        query, key, value = split_heads(query), split_heads(key), split_heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.backend == "xformers" and attention_mask is None:
            out = xformers_attention(query, key, value)
        else:
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        # (B, heads, N*L, head_dim) -> (B*N, L, inner)
        return out.transpose(1, 2).reshape(rows, length, inner_dim).to(query.dtype)


def xformers_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Memory-efficient attention of xformers on (B, heads, M, d) tensors (CUDA only)."""
    if query.device.type != "cuda":
        raise RuntimeError(
            "model.attention_backend=xformers runs on CUDA only; use 'sdpa' on this device"
        )
    try:
        import xformers.ops  # CUDA-only package: imported where it is used
    except ImportError as error:
        raise RuntimeError(
            "model.attention_backend=xformers needs the xformers package (pip install xformers)"
        ) from error
    # xformers takes (B, M, heads, d); its default scale is SDPA's 1/sqrt(d).
    out = xformers.ops.memory_efficient_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    )
    return out.transpose(1, 2)
