"""What a generation leaves on disk, ready for a 3D reconstruction or a person to look at.

In the output folder of one object:

    views/view_XXX.png   every generated view, in trajectory order
    grid.png             the views tiled
    turntable.gif/.mp4   the views as a looping video (MP4 when imageio-ffmpeg is installed)
    cameras.json         the OpenCV K and w2c of every view (viewdiff.cameras.cameras_json layout)
    inputs/input_XXX.png, input_cameras.json
                         the given views of image-conditional generation, with their cameras
    generation.json      the prompt, seed and sampler settings that made them
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from viewdiff.cameras.cameras_json import write_cameras
from viewdiff.inference.trajectory import Trajectory
from viewdiff.output_folders import check_output_folder
from viewdiff.scene.turntable import mp4_available, write_gif, write_mp4
from viewdiff.visualize import image_grid, to_pil

VIEWS_DIR = "views"
INPUTS_DIR = "inputs"


def to_frames(images: Tensor) -> np.ndarray:
    """Images (V, 3, H, W) in [-1, 1] as uint8 frames (V, H, W, 3)."""
    return np.stack([np.asarray(to_pil(image)) for image in images])


def output_folder(path: Path) -> Path:
    """``--out`` created (parents too), or a ValueError naming it: checked before any compute."""
    check_output_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {path}: cannot create it ({error.strerror})") from None
    return path


def write_views(folder: Path, images: Tensor, prefix: str = "view") -> list[Path]:
    """``folder/<prefix>_XXX.png`` for every image (V, 3, H, W) in [-1, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"{prefix}_{index:03d}.png")
        to_pil(image).save(paths[-1])
    return paths


def save_generation(
    out_dir: str | Path,
    images: Tensor,
    trajectory: Trajectory,
    info: dict[str, Any],
    given_images: Tensor | None = None,
    given_cameras: Trajectory | None = None,
    fps: float = 10.0,
) -> list[Path]:
    """Write the views (V, 3, H, W) of one object and everything listed above; returns paths."""
    out_dir = Path(out_dir)
    if images.shape[0] != len(trajectory):
        raise ValueError(f"{images.shape[0]} views for {len(trajectory)} cameras")
    written = write_views(out_dir / VIEWS_DIR, images, "view")
    pictures = [to_pil(image) for image in images]
    image_grid(pictures).save(out_dir / "grid.png")
    frames = to_frames(images)
    write_gif(out_dir / "turntable.gif", frames, fps)
    written += [out_dir / "grid.png", out_dir / "turntable.gif"]
    if mp4_available():
        write_mp4(out_dir / "turntable.mp4", frames, fps)
        written.append(out_dir / "turntable.mp4")
    write_cameras(out_dir / "cameras.json", trajectory.K, trajectory.w2c, trajectory.image_size_hw)
    written.append(out_dir / "cameras.json")
    if given_images is not None and given_cameras is not None:
        written += write_views(out_dir / INPUTS_DIR, given_images, "input")
        path = out_dir / "input_cameras.json"
        write_cameras(path, given_cameras.K, given_cameras.w2c, given_cameras.image_size_hw)
        written.append(path)
    (out_dir / "generation.json").write_text(json.dumps(info, indent=2) + "\n")
    written.append(out_dir / "generation.json")
    return written


def object_folder_name(index: int, prompt: str) -> str:
    """A folder name for the object made from prompt ``index``: '003_a_red_can'."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:40]
    return f"{index:03d}_{slug or 'unconditional'}"


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a text file ('#' starts a comment line)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"prompts file not found: {path}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompt in it (one prompt per line)")
    return prompts
