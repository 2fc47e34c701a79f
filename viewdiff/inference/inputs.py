"""Given views of image-conditional generation: image files and the cameras they were taken with.

Images are read as RGB (an alpha channel is composited onto white, the usual background of object
photos with their background removed) and brought to the generation size: with cameras, the whole
image is resized and K with it (``viewdiff.cameras.conventions.resize_intrinsics``), which needs the
same aspect ratio; without cameras (a single image), the centred square crop is resized and the
image gets the default camera of the trajectory (``default_input_camera``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from viewdiff.cameras.conventions import resize_intrinsics
from viewdiff.inference.trajectory import Trajectory


def read_image(path: str | Path) -> Image.Image:
    """An RGB image; transparency composited onto white."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise ValueError(f"input image not found: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def image_tensor(image: Image.Image) -> Tensor:
    """A PIL image as (3, H, W) in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float() / 127.5 - 1.0


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """The centred square crop of an image, resized to size x size."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.BICUBIC)


def load_given_views(
    paths: Sequence[str | Path], cameras: Trajectory, size_hw: tuple[int, int]
) -> tuple[Tensor, Trajectory]:
    """Images (M, 3, H, W) in [-1, 1] and their cameras, resized to ``size_hw`` together.

    ``cameras`` are the M images' cameras for images of ``cameras.image_size_hw``; each image
    must have that size.
    """
    if len(paths) != len(cameras):
        raise ValueError(f"{len(paths)} input images but {len(cameras)} input cameras")
    images = []
    for path in paths:
        image = read_image(path)
        if image.size[::-1] != tuple(cameras.image_size_hw):
            raise ValueError(
                f"{path}: {image.size[0]}x{image.size[1]} px, but its cameras are for "
                f"{cameras.image_size_hw[1]}x{cameras.image_size_hw[0]} px images"
            )
        images.append(image)
    old_h, old_w = cameras.image_size_hw
    new_h, new_w = size_hw
    if abs(old_w / old_h - new_w / new_h) > 1e-3:
        raise ValueError(
            f"input views of {old_w}x{old_h} px cannot be resized to {new_w}x{new_h} px "
            "without distortion; give cameras of the generation's aspect ratio"
        )
    resized = [image.resize((new_w, new_h), Image.Resampling.BICUBIC) for image in images]
    K = resize_intrinsics(cameras.K, cameras.image_size_hw, size_hw)
    return torch.stack([image_tensor(image) for image in resized]), Trajectory(
        K, cameras.w2c, size_hw
    )


def load_single_view(path: str | Path, camera: Trajectory) -> tuple[Tensor, Trajectory]:
    """One image (1, 3, S, S) in [-1, 1] (centre square, resized) with the given default camera."""
    height, width = camera.image_size_hw
    if height != width:
        raise ValueError(f"the default input camera must be square, got {width}x{height}")
    return image_tensor(centre_square(read_image(path), height))[None], camera
