"""CLIP directional similarity of an edit (InstructPix2Pix / IN2N / GaussianEditor's metric).

cos(E_img(after) - E_img(before), E_txt(target) - E_txt(source)), averaged over views: whether the
images changed in the direction the text did. The CLIP model is a user-supplied folder (any
transformers CLIPModel with its tokenizer, e.g. openai/clip-vit-large-patch14 saved locally);
images are resized and normalised here in torch (CLIP's bicubic resize of the short side, centre
crop, its mean and std), so that no torchvision is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPModel, CLIPTokenizer

# CLIP's preprocessing constants (OpenAI), used when the folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipDirection:
    """A CLIP model and tokenizer from ``folder``, frozen, for directional similarity."""

    def __init__(self, folder: Path, device: torch.device | str = "cpu") -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"--clip {folder}: not a transformers CLIP folder (no config.json)")
        self.model = CLIPModel.from_pretrained(folder).eval().requires_grad_(False).to(device)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder)
        self.size = int(self.model.config.vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        processor = folder / "preprocessor_config.json"
        if processor.is_file():
            settings = json.loads(processor.read_text())
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        self.mean = torch.tensor(mean, device=device)[:, None, None]
        self.std = torch.tensor(std, device=device)[:, None, None]

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """Unit CLIP embeddings (V, D) of images (V, 3, H, W) in [0, 1]."""
        height, width = images.shape[-2:]
        scale = self.size / min(height, width)
        size = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        resized = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
        top, left = (size[0] - self.size) // 2, (size[1] - self.size) // 2
        crop = resized[..., top : top + self.size, left : left + self.size].clamp(0, 1)
        pixels = (crop.to(self.mean.device) - self.mean) / self.std
        return F.normalize(_projected(self.model.get_image_features(pixel_values=pixels)), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> Tensor:
        """Unit CLIP embeddings (T, D) of texts."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        features = self.model.get_text_features(**tokens.to(self.mean.device))
        return F.normalize(_projected(features), dim=-1)

    def directional_similarity(
        self, before: Tensor, after: Tensor, source: str, target: str
    ) -> float:
        """Mean over views of cos(image change, text change); before/after (V, 3, H, W)."""
        image_change = self.image_features(after) - self.image_features(before)
        text = self.text_features([source, target])
        text_change = (text[1] - text[0])[None]
        return float(F.cosine_similarity(image_change, text_change, dim=-1).mean())


def _projected(output: Any) -> Tensor:
    """The projected embeddings: transformers < 5 returns them, 5 a pooled output holding them."""
    return output if isinstance(output, Tensor) else output.pooler_output
