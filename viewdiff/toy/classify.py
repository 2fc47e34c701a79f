"""What a toy image shows: its object's colour and shape, read off the pixels by simple rules.

Toy objects are saturated and their backdrops are grey (``viewdiff.data.toy_objects``), so the
foreground is the pixels of HSV saturation above ``SATURATION_THRESHOLD``. The colour is the
named hue nearest to the saturation-weighted circular mean hue of the foreground. The shape is a
linear (softmax) classifier over a silhouette descriptor: the foreground mask and its
brightness, cropped to the mask's box, padded square (keeping the aspect ratio) and pooled to
16 x 16. It is fitted on real renders (``fit_shape_classifier``) and its accuracy on held-out
real renders is reported beside every use (``bench/toy_quality.py``), so that a generated image
counts as a "ball" only by the rule that calls real balls balls.

An image with too few foreground pixels shows no object: both predictions are None (wrong).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from viewdiff.data.toy_objects import TOY_COLOURS, TOY_SHAPES

SATURATION_THRESHOLD = 0.35
MIN_FOREGROUND = 0.02  # fraction of the image
DESCRIPTOR_SIZE = 16


def rgb_to_hsv(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue in [0, 1), saturation and value (each (B, H, W)) of images (B, 3, H, W) in [0, 1]."""
    r, g, b = images.unbind(1)
    value, _ = images.max(1)
    low, _ = images.min(1)
    chroma = value - low
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-8), torch.zeros_like(value))
    safe = chroma.clamp_min(1e-8)
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6.0,
        torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue)) % 1.0
    return hue, saturation, value


def foreground(images: Tensor) -> Tensor:
    """The saturated pixels (B, H, W) bool of images (B, 3, H, W) in [0, 1]."""
    return rgb_to_hsv(images)[1] > SATURATION_THRESHOLD


def has_object(masks: Tensor) -> Tensor:
    """Whether each foreground mask (B, H, W) covers enough of its image to be an object."""
    return masks.flatten(1).float().mean(1) >= MIN_FOREGROUND


def classify_colour(images: Tensor) -> list[str | None]:
    """The toy colour name of each image's foreground (None: no object)."""
    hue, saturation, _ = rgb_to_hsv(images)
    masks = saturation > SATURATION_THRESHOLD
    weights = saturation * masks
    angle = 2.0 * math.pi * hue
    mean = torch.atan2(
        (weights * angle.sin()).flatten(1).sum(1), (weights * angle.cos()).flatten(1).sum(1)
    )
    names, centres = list(TOY_COLOURS), torch.tensor(list(TOY_COLOURS.values())) * 2.0 * math.pi
    distance = (mean[:, None] - centres[None]).remainder(2 * math.pi)  # circular distance
    distance = torch.minimum(distance, 2 * math.pi - distance)
    nearest = distance.argmin(1).tolist()
    present = has_object(masks).tolist()
    return [names[i] if ok else None for i, ok in zip(nearest, present, strict=True)]


def silhouette_descriptor(images: Tensor) -> Tensor:
    """Per image (B, 2 * 16 * 16): its foreground mask and normalised brightness inside it,
    cropped to the mask's box, padded square around its centre and area-pooled to 16 x 16."""
    _, saturation, value = rgb_to_hsv(images)
    masks = (saturation > SATURATION_THRESHOLD).float()
    descriptors = []
    for mask, brightness in zip(masks, value, strict=True):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        if rows.numel() == 0:
            descriptors.append(torch.zeros(2 * DESCRIPTOR_SIZE**2))
            continue
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = int(max(bottom - top, right - left))
        channels = torch.stack([mask, brightness * mask])[:, top:bottom, left:right]
        pad_h, pad_w = side - channels.shape[1], side - channels.shape[2]
        channels = F.pad(channels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        pooled = F.adaptive_avg_pool2d(channels[None], DESCRIPTOR_SIZE)[0]
        inside = pooled[0].clamp_min(1e-3)
        shade = pooled[1] / inside  # mean brightness of the object in each cell
        shade = (shade - shade[pooled[0] > 0.5].mean()) * (pooled[0] > 0.5)  # relative shading
        descriptors.append(torch.cat([pooled[0].flatten(), shade.flatten()]))
    return torch.stack(descriptors)


@dataclass(frozen=True)
class ShapeClassifier:
    """A softmax classifier over silhouette descriptors; ``mean``/``std`` standardise them."""

    weight: Tensor  # (shapes, D)
    bias: Tensor  # (shapes,)
    mean: Tensor  # (D,)
    std: Tensor  # (D,)
    shapes: tuple[str, ...] = TOY_SHAPES

    def logits(self, descriptors: Tensor) -> Tensor:
        """Class scores (B, shapes) of descriptors (B, D)."""
        return ((descriptors - self.mean) / self.std) @ self.weight.T + self.bias

    def __call__(self, images: Tensor) -> list[str | None]:
        """The shape name of each image (B, 3, H, W) in [0, 1] (None: no object)."""
        predicted = self.logits(silhouette_descriptor(images)).argmax(1).tolist()
        present = has_object(foreground(images)).tolist()
        return [self.shapes[i] if ok else None for i, ok in zip(predicted, present, strict=True)]


def fit_shape_classifier(
    images: Tensor, labels: Sequence[str], weight_decay: float = 1e-3, steps: int = 300
) -> ShapeClassifier:
    """Fit the shape classifier on real renders (B, 3, H, W) in [0, 1] and their shape names."""
    descriptors = silhouette_descriptor(images)
    targets = torch.tensor([TOY_SHAPES.index(label) for label in labels])
    mean, std = descriptors.mean(0), descriptors.std(0).clamp_min(1e-3)
    x = (descriptors - mean) / std
    weight = torch.zeros(len(TOY_SHAPES), x.shape[1], requires_grad=True)
    bias = torch.zeros(len(TOY_SHAPES), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, targets) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return ShapeClassifier(weight.detach(), bias.detach(), mean, std)


def toy_words(caption: str) -> tuple[str, str]:
    """The colour and shape of a toy caption: 'an orange can' -> ('orange', 'can')."""
    *_, colour, shape = caption.split()
    return colour, shape


def classifier_accuracy(
    classifier: ShapeClassifier, images: Tensor, captions: Sequence[str]
) -> dict[str, float]:
    """Colour and shape accuracy on images (M, 3, H, W) in [0, 1] that should show ``captions``."""
    words = [toy_words(caption) for caption in captions]
    return {
        "colour": accuracy(classify_colour(images), [colour for colour, _ in words]),
        "shape": accuracy(classifier(images), [shape for _, shape in words]),
    }


def accuracy(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Fraction of predictions equal to the truth (None is always wrong)."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labels")
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
