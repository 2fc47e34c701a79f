"""The multi-view UNet: a diffusers UNet augmented as in ViewDiff (CVPR 2024, Sec. 3).

``MultiViewUNet(unet, config)`` takes any diffusers ``UNet2DConditionModel`` (SD 2.1 base, or the
tiny ones of ``viewdiff.tiny``) and, in place, without editing diffusers or renaming any of its
modules:

- sets a ``MultiViewAttnProcessor`` on every attention (``unet.set_attn_processor``): cross-frame
  attention in every attn1, pose-conditioned LoRA on attn1 and attn2 (``attention``, ``lora``);
- adds a ``ProjectionLayer`` to every transformer of ``config.projection_blocks``: inside each of
  its ``BasicTransformerBlock``s between cross-attention and the feed-forward, its output replacing
  the features (``projection_merge: replace``, the paper's; ``projected_block``), or after the
  whole ``Transformer2DModel``, its output added through a forward hook (``residual``).

The new weights live in this module's ``attention_layers`` and ``projection_layers``; ``unet``
keeps exactly diffusers' state dict, so the fine-tuned UNet saves with diffusers'
``save_pretrained`` (``persistence`` saves and loads the rest). The per-call condition (cameras,
pose features, time embedding) travels as
``cross_attention_kwargs={"multiview": MultiViewCondition}``, see ``attention``.

Forward, in diffusers' names: ``latents`` (B*N, 4, h, w) with the N views of object b at rows
b*N .. b*N+N-1, ``timesteps`` (B*N,) per view, ``encoder_hidden_states`` (B*N, 77, D), cameras
``K`` (B*N or B,N, 3, 3) in pixels of the images and ``w2c`` (.., 4, 4) in the normalised scene,
``pose_features`` (.., 10) from ``viewdiff.cameras.pose_features``, and ``n_views`` = N.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from peft import LoraConfig
from torch import Tensor, nn

from viewdiff.cameras.pose_features import POSE_FEATURE_DIM
from viewdiff.config import ModelConfig
from viewdiff.model.attention import MultiViewAttnProcessor, MultiViewCondition
from viewdiff.model.lora import PoseLoRA
from viewdiff.model.projected_block import install_projection
from viewdiff.model.projection import ProjectionLayer

if TYPE_CHECKING:
    from viewdiff.model.attention_control import AttentionControl

BASE_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
VAE_SCALE_FACTOR = 8  # SD's VAE: images are 8x the latents


def module_key(name: str) -> str:
    """ModuleDict key of a diffusers module path ('.' is not allowed in module names)."""
    return name.replace(".", "_")


def _per_view(value: Tensor, name: str, rows: int, n_views: int, tail: tuple[int, ...]) -> Tensor:
    """``value`` shaped (B*N, *tail) or (B, N, *tail), returned as (B*N, *tail)."""
    if value.shape == (rows, *tail):
        return value
    if value.shape == (rows // n_views, n_views, *tail):
        return value.reshape(rows, *tail)
    expected = f"{(rows, *tail)} or {(rows // n_views, n_views, *tail)}"
    raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {expected}")


def token_grid(tokens: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of a transformer's token grid of ``tokens`` tokens, for latents of ``latent_hw``:
    the latents halved (rounding up, as SD's stride-2 convolutions) until the count matches."""
    if latent_hw is None:
        side = math.isqrt(tokens)
        if side * side == tokens:
            return side, side
        raise ValueError(f"{tokens} tokens are not a square grid and no latent size was given")
    height, width = latent_hw
    while height * width > tokens:
        height, width = -(-height // 2), -(-width // 2)
    if height * width != tokens:
        raise ValueError(f"{tokens} tokens are no grid of latents {latent_hw} halved")
    return height, width


def _multiview_condition(key: str, kwargs: dict[str, Any] | None) -> MultiViewCondition:
    """This call's ``MultiViewCondition`` from a block's cross_attention_kwargs, or an error."""
    condition = (kwargs or {}).get("multiview")
    if condition is None:
        raise ValueError(
            f"projection layer {key} needs cross_attention_kwargs={{'multiview': ...}}; "
            "call MultiViewUNet, not the wrapped UNet"
        )
    return condition


def check_model_config(config: ModelConfig) -> None:
    """Refuse settings that cannot build, naming the key (``ModelConfig.check``: the one place
    a model section is checked, from a preset, an override or code)."""
    config.check()


class MultiViewUNet(nn.Module):
    """A diffusers UNet with cross-frame attention, pose-conditioned LoRA and projection layers."""

    def __init__(self, unet: UNet2DConditionModel, config: ModelConfig) -> None:
        super().__init__()
        check_model_config(config)
        self.unet = unet
        self.config = config
        self.temb_dim = unet.time_embedding.linear_2.out_features
        self.attention_layers = nn.ModuleDict()
        self.projection_layers = nn.ModuleDict()
        self._install_attention()
        if config.projection_layers:
            self._install_projection()

    @property
    def device(self) -> torch.device:
        """Where the UNet is (diffusers' pipelines ask every component)."""
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype."""
        return self.unet.dtype

    def _install_attention(self) -> None:
        """One ``MultiViewAttnProcessor`` per attention, with its pose LoRA if configured."""
        config, processors = self.config, {}
        for name in self.unet.attn_processors:
            attn = self.unet.get_submodule(name.removesuffix(".processor"))
            is_self_attention = not attn.is_cross_attention
            lora = None
            if config.pose_lora:
                lora = PoseLoRA(
                    query_dim=attn.to_q.in_features,
                    key_dim=attn.to_k.in_features,
                    inner_dim=attn.to_q.out_features,
                    pose_dim=POSE_FEATURE_DIM,
                    rank=config.pose_lora_rank,
                    temb_dim=self.temb_dim if is_self_attention else None,
                    timestep_dim=config.pose_timestep_dim if is_self_attention else 0,
                )
                self.attention_layers[module_key(name.removesuffix(".processor"))] = lora
            processors[name] = MultiViewAttnProcessor(
                cross_frame=config.cross_frame_attention and is_self_attention,
                lora=lora,
                backend=config.attention_backend,
            )
        self.unet.set_attn_processor(processors)

    def _install_projection(self) -> None:
        """A projection layer in every transformer of the configured blocks: inside each of its
        transformer blocks, replacing the features (``replace``), or after it, adding to its
        output through a forward hook (``residual``)."""
        config = self.config
        widest = max(self.unet.config.block_out_channels)
        for block_name in config.projection_blocks:
            for index, transformer in enumerate(self._transformers(block_name)):
                name = f"{block_name}.attentions.{index}"
                channels = transformer.config.in_channels
                if config.projection_merge == "residual":
                    key = module_key(name)
                    self.projection_layers[key] = self._projection_layer(channels, widest)
                    hook = functools.partial(self._project_after, key)
                    transformer.register_forward_hook(hook, with_kwargs=True)
                    continue
                for position, block in enumerate(transformer.transformer_blocks):
                    block_path = f"{name}.transformer_blocks.{position}"
                    key = module_key(block_path)
                    self.projection_layers[key] = self._projection_layer(channels, widest)
                    projection = functools.partial(self._project_inside, key)
                    install_projection(block, projection, block_path)

    def _transformers(self, block_name: str) -> list[Any]:
        """The transformers of a UNet block named in ``model.projection_blocks``."""
        try:
            block = self.unet.get_submodule(block_name)
        except AttributeError:
            block = None
        if block is None or not getattr(block, "attentions", None):
            known = [n for n, m in self.unet.named_children() if n.endswith("blocks")]
            raise ValueError(
                f"model.projection_blocks: {block_name!r} is not a UNet block with "
                f"transformers (blocks are e.g. down_blocks.2, mid_block, up_blocks.1; "
                f"this UNet has {known})"
            )
        return list(block.attentions)

    def _projection_layer(self, channels: int, widest: int) -> ProjectionLayer:
        """A projection layer for C-channel features, its grid by ``model.voxel_grid_by_width``."""
        config = self.config
        grid_size = config.voxel_grid_size
        if config.voxel_grid_by_width:
            grid_size, remainder = divmod(config.voxel_grid_size * widest, channels)
            if remainder or grid_size % 2:
                raise ValueError(
                    f"model.voxel_grid_by_width: a {channels}-channel stage gets a grid of "
                    f"{config.voxel_grid_size} x {widest} / {channels}, not an even integer; "
                    "choose another model.voxel_grid_size or voxel_grid_by_width: false"
                )
        return ProjectionLayer(
            channels=channels,
            grid_channels=config.projection_channels,
            grid_size=grid_size,
            num_samples=config.render_samples,
            background=config.projection_background,
            temb_dim=self.temb_dim,
            checkpointing=config.projection_checkpointing,
            disparity_at_infinity=config.disparity_at_infinity,
            density_noise=config.density_noise,
            voxel_unet=config.voxel_unet,
            ray_directions=config.ray_directions,
            merge=config.projection_merge,
            projection_in=config.projection_in,
            projection_out=config.projection_out,
            opacity_init_bias=config.opacity_init_bias,
            normalise_rendered=config.normalise_rendered,
        )

    def _project(self, key: str, features: Tensor, condition: MultiViewCondition) -> Tensor:
        """Projection layer ``key`` on feature maps (B*N, C, h, w) of this call's views, with
        the density noise it drew in this call if it runs again (a recomputed block)."""
        layer: ProjectionLayer = self.projection_layers[key]  # type: ignore[assignment]
        noise = condition.density_noise.get(key)
        if noise is None:
            rows, _, height, width = features.shape
            rays = condition.n_views * height * width
            noise = layer.draw_density_noise(
                rows // condition.n_views, rays, condition.noise_generator
            )
            if noise is not None:
                condition.density_noise[key] = noise
        return layer(
            features,
            condition.K,
            condition.w2c,
            condition.image_size_hw,
            condition.temb,
            condition.timesteps,
            condition.n_views,
            condition.unprojected,
            density_noise=noise,
        )

    def _project_inside(self, key: str, hidden_states: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """A transformer block's projection (``replace``): tokens (B*N, h*w, C) -> its output."""
        condition = _multiview_condition(key, kwargs)
        rows, tokens, channels = hidden_states.shape
        height, width = token_grid(tokens, condition.latent_hw)
        maps = hidden_states.transpose(1, 2).reshape(rows, channels, height, width)
        projected = self._project(key, maps, condition)  # (B*N, C, h, w)
        return projected.reshape(rows, channels, tokens).transpose(1, 2)

    def _project_after(
        self, key: str, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any
    ) -> Any:
        """Forward hook (``residual``): add the projection layer's output to a transformer's."""
        condition = _multiview_condition(key, kwargs.get("cross_attention_kwargs"))
        sample = output[0] if isinstance(output, tuple) else output.sample
        sample = sample + self._project(key, sample, condition)
        if isinstance(output, tuple):
            return (sample, *output[1:])
        return Transformer2DModelOutput(sample=sample)

    def forward(
        self,
        latents: Tensor,
        timesteps: Tensor | int,
        encoder_hidden_states: Tensor,
        K: Tensor,
        w2c: Tensor,
        pose_features: Tensor,
        n_views: int,
        image_size_hw: tuple[int, int] | None = None,
        unprojected_views: Tensor | None = None,
        control: AttentionControl | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> Tensor:
        """Predicted noise (or v) (B*N, 4, h, w) for N posed views per object (see the module).

        ``image_size_hw`` is the size of the images ``K`` refers to (default 8x the latents);
        ``unprojected_views`` (B*N or B,N) bool says which views the projection layers lift
        into their grids (default all); ``control`` is TrAME's attention control of this call;
        ``noise_generator`` draws the projection layers' density noise (training mode only).
        """
        if latents.ndim != 4:
            raise ValueError(f"latents must be (B*N, C, h, w), got shape {tuple(latents.shape)}")
        rows = latents.shape[0]
        if n_views < 1 or rows % n_views:
            raise ValueError(f"latents have {rows} rows: not whole objects of n_views={n_views}")
        if encoder_hidden_states.shape[0] != rows:
            raise ValueError(
                f"encoder_hidden_states has {encoder_hidden_states.shape[0]} rows, latents {rows}"
            )
        timesteps = torch.as_tensor(timesteps, device=latents.device)
        timesteps = timesteps.expand(rows) if timesteps.ndim == 0 else timesteps.reshape(-1)
        if timesteps.shape[0] != rows:
            raise ValueError(f"timesteps must be a scalar or have {rows} entries")
        if unprojected_views is not None:
            unprojected_views = _per_view(unprojected_views, "unprojected_views", rows, n_views, ())
        height, width = latents.shape[-2:]
        condition = MultiViewCondition(
            n_views=n_views,
            pose=_per_view(pose_features, "pose_features", rows, n_views, (POSE_FEATURE_DIM,)).to(
                latents.dtype
            ),
            temb=self.time_embedding(latents, timesteps),
            timesteps=timesteps,
            K=_per_view(K, "K", rows, n_views, (3, 3)),
            w2c=_per_view(w2c, "w2c", rows, n_views, (4, 4)),
            image_size_hw=image_size_hw or (VAE_SCALE_FACTOR * height, VAE_SCALE_FACTOR * width),
            latent_hw=(height, width),
            unprojected=unprojected_views,
            control=control,
            noise_generator=noise_generator,
        )
        return self.unet(
            latents,
            timesteps,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs={"multiview": condition},
            return_dict=False,
        )[0]

    def time_embedding(self, latents: Tensor, timesteps: Tensor) -> Tensor:
        """The UNet's time embedding (B*N, T) of per-view timesteps (no class/added embeddings)."""
        emb = self.unet.time_embedding(self.unet.get_time_embed(sample=latents, timestep=timesteps))
        if self.unet.time_embed_act is not None:
            emb = self.unet.time_embed_act(emb)
        return emb

    def compile_projection_layers(self, backend: str = "inductor") -> None:
        """torch.compile every projection layer in place (state dict and checkpoints unchanged).

        Their shapes are fixed per layer (grid, samples, feature size), so each compiles once; on
        2 CPU cores that takes about two minutes and then saves ~20% of a layer's fwd+bwd
        (bench/projection.py --compile); on CUDA the fused elementwise kernels matter more.
        """
        for layer in self.projection_layers.values():
            layer.compile(backend=backend, dynamic=False)

    # Parameters: the renderer gets its own learning rate (reference: vol_rend_learning_rate).

    def renderer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the projection layers' volume renderers' fields (MLP, density and
        feature heads), which train at their own learning rate. Not their ray-direction
        encoders: the reference's ``linear_ray`` sits beside its ``volume_renderer`` and trains
        with the UNet (layer.py:155; train_util.py:529-547 splits by the module's name)."""
        renderers = [layer.get_submodule("renderer") for layer in self.projection_layers.values()]
        return [
            p
            for renderer in renderers
            for name, p in renderer.named_parameters()
            if not name.startswith("ray_encoder.")
        ]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint groups: 'unet' (base weights, peft LoRA included), 'added', 'renderer'.

        All parameters, trainable or not: the training code picks what it trains.
        """
        renderer = self.renderer_parameters()
        renderer_ids = {id(p) for p in renderer}
        added = [
            p
            for name, p in self.named_parameters()
            if not name.startswith("unet.") and id(p) not in renderer_ids
        ]
        return {"unet": list(self.unet.parameters()), "added": added, "renderer": renderer}

    def added_state_dict(self) -> dict[str, Tensor]:
        """State dict of what was added to the UNet (attention LoRA, projection layers)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("unet.")}


def add_base_lora(unet: UNet2DConditionModel, rank: int) -> LoraConfig:
    """Add a peft LoRA adapter to to_q/to_k/to_v/to_out.0 of every attention of the base UNet."""
    if rank < 1:
        raise ValueError(f"model.base_lora_rank must be at least 1, got {rank}")
    lora_config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(BASE_LORA_TARGETS))
    unet.add_adapter(lora_config)
    return lora_config
