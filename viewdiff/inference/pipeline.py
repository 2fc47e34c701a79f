"""``MultiViewPipeline``: the multi-view prior as a diffusers pipeline, in diffusers' terms.

    pipe = MultiViewPipeline.from_pretrained("runs/x/model").to("cuda")
    out = pipe("a red car", cameras=orbit_trajectory(8, 30.0, 4.0, 256), generator=generator)
    out.images[0][3]  # the first prompt's fourth view, a PIL image

It is a ``diffusers.DiffusionPipeline`` (``.to``, ``.device``, ``.dtype``, ``.components``,
``set_progress_bar_config``) whose components are the multi-view UNet, the base's VAE, text
encoder and tokenizer, and ``scheduler``, the sampler, on the training noise schedule. Swap the
sampler as in diffusers (``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``);
it must be one of ``viewdiff.sampling.SCHEDULERS``. ``from_pretrained`` reads any inference
export, a self-contained folder (``viewdiff.prior.self_contained``) included, through
``load_export``: diffusers' generic loader cannot build the multi-view UNet, which is no
``ModelMixin``. Sampling is ``generate_views``, the loop of ``infer.py sample``, unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from viewdiff.config import SampleConfig
from viewdiff.inference.autoregressive import generate_views
from viewdiff.inference.trajectory import Trajectory, orbit_trajectory
from viewdiff.model import MultiViewUNet
from viewdiff.model.attention import AttentionBackend
from viewdiff.prior.load import ExportInfo, PriorModels, load_export
from viewdiff.sampling import SCHEDULERS, inference_scheduler
from viewdiff.visualize import to_pil

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class MultiViewPipelineOutput(BaseOutput):
    """B prompts x V views: ``images`` as lists of PIL images ('pil'), an array (B, V, H, W, 3)
    ('np') or a tensor (B, V, 3, H, W) ('pt') in [0, 1], and the ``cameras`` they were seen by."""

    images: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor
    cameras: Trajectory


def _seeds(
    generator: torch.Generator | Sequence[torch.Generator] | None, n: int, default: int
) -> list[int]:
    """One seed per prompt: each generator's seed, or one generator's (or the default) + i."""
    if isinstance(generator, Sequence):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} prompts")
        return [g.initial_seed() for g in generator]
    first = default if generator is None else generator.initial_seed()
    return [first + index for index in range(n)]


class MultiViewPipeline(DiffusionPipeline):
    """Text to N posed, consistent views of an object with a trained multi-view prior."""

    def __init__(
        self,
        unet: MultiViewUNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: SchedulerMixin,
        export: ExportInfo | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.export = export  # the sample.* defaults and the image size of training

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        base: str | Path | None = None,
        attention_backend: AttentionBackend = "sdpa",
    ) -> MultiViewPipeline:
        """The pipeline of an export folder (``base``: its base pipeline from there instead)."""
        prior = load_export(
            pretrained_model_name_or_path,
            device,
            torch_dtype or torch.float32,
            attention_backend=attention_backend,
            base=base,
        )
        sampler = inference_scheduler(prior.info.config.sample.scheduler, prior.scheduler_config)
        return cls(prior.model, prior.vae, prior.text_encoder, prior.tokenizer, sampler, prior.info)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        """Refused: the folder to share is written by ``write_self_contained(export, out)``."""
        raise NotImplementedError(
            "MultiViewPipeline.save_pretrained: write a self-contained folder with "
            "viewdiff.prior.self_contained.write_self_contained(export, out)"
        )

    def _sample_settings(
        self, num_inference_steps: int | None, guidance_scale: float | None
    ) -> SampleConfig:
        """The export's sample config with the call's steps, guidance and this sampler."""
        sampler = {cls: name for name, cls in SCHEDULERS.items()}.get(type(self.scheduler))
        if sampler is None:
            raise ValueError(
                f"pipe.scheduler is a {type(self.scheduler).__name__}; the multi-view sampler "
                f"runs {', '.join(cls.__name__ for cls in SCHEDULERS.values())}"
            )
        sample = self.export.config.sample if self.export is not None else SampleConfig()
        if num_inference_steps is None:
            num_inference_steps = sample.num_inference_steps
        if guidance_scale is None:
            guidance_scale = sample.guidance_scale
        return dataclasses.replace(
            sample,
            scheduler=sampler,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )

    def _image_size(self) -> int:
        """The training image side (the export's data.image_size, else the UNet's native one)."""
        if self.export is not None:
            return self.export.config.data.image_size
        return self.unet.unet.config.sample_size * 8

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        cameras: Trajectory | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        num_views: int = 8,
        return_dict: bool = True,
    ) -> MultiViewPipelineOutput | tuple:
        """Views of every prompt, one per camera (default: ``num_views`` on the export's orbit).

        Steps and guidance default to the export's ``sample.*``. Only each generator's seed
        (``initial_seed``) is used: ``generate_views`` re-seeds every window from it, so that the
        same seed gives the same views as ``infer.py sample --seed``; one generator (or none:
        ``sample.seed``) gives prompt i its seed + i.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sample = self._sample_settings(num_inference_steps, guidance_scale)
        if cameras is None:
            cameras = orbit_trajectory(
                num_views, sample.elevation_deg, sample.radius, self._image_size(), sample.fov_deg
            )
        prior = PriorModels(
            self.unet,
            self.vae,
            self.text_encoder,
            self.tokenizer,
            dict(self.scheduler.config),  # generate_views rebuilds this sampler from it
        )
        show_progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        seeds = _seeds(generator, len(prompts), sample.seed)
        images = generate_views(prior, prompts, cameras, sample, seeds, show_progress=show_progress)
        output: Any = ((images + 1.0) / 2.0).clamp(0.0, 1.0)  # (B, V, 3, H, W)
        if output_type == "np":
            output = output.permute(0, 1, 3, 4, 2).numpy()
        elif output_type == "pil":
            output = [[to_pil(view) for view in views] for views in images]
        if not return_dict:
            return (output, cameras)
        return MultiViewPipelineOutput(images=output, cameras=cameras)
