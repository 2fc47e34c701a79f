"""The models that inversion and editing run: a multi-view export or a plain SD folder.

``load_editing_model`` takes either an inference export (the multi-view prior: N posed views of
one object inverted and edited jointly, cameras as in sampling) or any diffusers Stable Diffusion
folder (``model_index.json``: single images, no cameras). ``denoiser`` binds a prompt, guidance
and (multi-view) cameras into the ``Denoiser`` call of ``viewdiff.editing.inversion``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from viewdiff.cameras.pose_features import pose_features
from viewdiff.editing.inversion import Denoiser
from viewdiff.inference.trajectory import Trajectory
from viewdiff.model import MultiViewUNet
from viewdiff.model.persistence import CONFIG_FILE
from viewdiff.prior.call import ViewConditions, encode_prompts, guided_prediction, prior_predictions
from viewdiff.prior.load import load_export, read_export


@dataclass
class EditingModel:
    """A denoiser with its VAE and text encoder: ``kind`` multiview (an export) or sd."""

    kind: str
    model: MultiViewUNet | UNet2DConditionModel  # multiview | sd
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    image_size: int  # the training (multiview) or native (sd) image side

    @property
    def device(self) -> torch.device:
        """Where the models are."""
        return self.vae.device

    def scheduler(self) -> DDIMScheduler:
        """DDIM on the model's noise schedule, run at eta = 1 by the inversion."""
        return DDIMScheduler.from_config(self.scheduler_config)


def is_sd_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers Stable Diffusion folder (not an export, not a
    self-contained export folder, which has a model_index.json too)."""
    return (Path(path) / "model_index.json").is_file() and not (Path(path) / CONFIG_FILE).is_file()


def check_editing_model(path: Path, base: Path | None = None) -> str:
    """'sd' or 'multiview' for a folder that loads, or a ValueError naming it; loads nothing.

    ``base``: a multi-view export's base pipeline from this folder (``--base``)."""
    if is_sd_folder(path):
        if base is not None:
            raise ValueError(
                f"--base is for an inference export; {path} is a Stable Diffusion folder"
            )
        missing = [
            p
            for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
            if not (Path(path) / p).is_dir()
        ]
        if missing:
            raise ValueError(f"{path}: a Stable Diffusion folder without {', '.join(missing)}")
        return "sd"
    read_export(path, base)
    return "multiview"


def load_editing_model(
    path: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    base: Path | None = None,
) -> EditingModel:
    """The export (its base from ``base`` if given) or SD folder at ``path`` on ``device``,
    frozen, in eval mode."""
    if check_editing_model(path, base) == "multiview":
        prior = load_export(path, device, dtype, base=base)
        size = prior.info.config.data.image_size
        return EditingModel(
            "multiview",
            prior.model,
            prior.vae,
            prior.text_encoder,
            prior.tokenizer,
            prior.scheduler_config,
            size,
        )
    path = Path(path)
    parts = {
        "model": UNet2DConditionModel.from_pretrained(path / "unet"),
        "vae": AutoencoderKL.from_pretrained(path / "vae"),
        "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder"),
    }
    for module in parts.values():
        module.requires_grad_(False).eval().to(device)
        if next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    scheduler_config = dict(DDPMScheduler.load_config(path / "scheduler"))
    size = parts["model"].config.sample_size * 8
    return EditingModel(
        "sd", parts["model"], parts["vae"], parts["text_encoder"], tokenizer, scheduler_config, size
    )


def denoiser(
    editing: EditingModel, prompt: str, guidance: float, cameras: Trajectory | None = None
) -> Denoiser:
    """The guided model call for ``prompt``: the N views of ``cameras`` jointly (multiview, one
    object), or each row alone (sd)."""
    device = editing.device
    text = encode_prompts(editing.text_encoder, editing.tokenizer, [prompt])
    empty = encode_prompts(editing.text_encoder, editing.tokenizer, [""])
    if editing.kind == "multiview":
        if cameras is None:
            raise ValueError("the multi-view prior needs the views' cameras")
        K, w2c = cameras.K[None].to(device), cameras.w2c[None].to(device)
        pose = pose_features(K, w2c, cameras.image_size_hw)
        conditions = ViewConditions(text, empty, K, w2c, pose, cameras.image_size_hw)

        def multiview(latents: Tensor, timesteps: Tensor) -> Tensor:
            guided, _ = prior_predictions(
                editing.model, latents, timesteps.to(device), conditions, guidance
            )
            return guided.to(latents.dtype)

        return multiview

    unet = editing.model

    def single(latents: Tensor, timesteps: Tensor) -> Tensor:
        rows = latents.shape[0]
        hidden = torch.cat([empty.expand(rows, -1, -1), text.expand(rows, -1, -1)])
        inputs = torch.cat([latents, latents]).to(unet.dtype)
        output = unet(inputs, timesteps.to(device).repeat(2), hidden.to(unet.dtype)).sample
        uncond, cond = output.float().chunk(2)
        return guided_prediction(uncond, cond, guidance).to(latents.dtype)

    return single
