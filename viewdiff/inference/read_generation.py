"""The views of a generation folder (what ``infer.py sample`` / ``condition`` wrote with
``viewdiff.inference.outputs.save_generation``), read back and checked: for ``infer.py fit``
and ``infer.py export``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from viewdiff.cameras.cameras_json import read_cameras
from viewdiff.inference.inputs import read_image
from viewdiff.inference.outputs import VIEWS_DIR


@dataclass(frozen=True)
class GenerationViews:
    """The views of a generation folder: PNG paths in name order and their cameras."""

    paths: list[Path]
    K: Tensor  # (V, 3, 3), pixels, centres at integers
    w2c: Tensor  # (V, 4, 4), OpenCV
    image_size_hw: tuple[int, int]

    def __len__(self) -> int:
        return len(self.paths)


def read_generation_views(folder: Path, flag: str = "--views") -> GenerationViews:
    """The checked views of a generation folder, or a ValueError naming the folder or file."""
    if not folder.is_dir():
        raise ValueError(f"{flag} {folder}: no such folder")
    views_dir = folder / VIEWS_DIR
    paths = sorted(views_dir.glob("*.png")) if views_dir.is_dir() else []
    if not paths:
        raise ValueError(f"{flag} {folder}: no {VIEWS_DIR}/*.png (a folder of infer.py sample)")
    cameras = folder / "cameras.json"
    if not cameras.is_file():
        raise ValueError(f"{flag} {folder}: no cameras.json beside {VIEWS_DIR}/")
    K, w2c, size_hw = read_cameras(cameras)
    if len(paths) != K.shape[0]:
        raise ValueError(
            f"{views_dir}: {len(paths)} PNGs but {cameras} has {K.shape[0]} views; "
            "they must match one to one, in name order"
        )
    for path in paths:
        width, height = read_image(path).size
        if (height, width) != tuple(size_hw):
            raise ValueError(
                f"{path}: {width}x{height} px, but {cameras} is for "
                f"{size_hw[1]}x{size_hw[0]} px images"
            )
    return GenerationViews(paths, K, w2c, size_hw)
