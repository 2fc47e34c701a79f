"""Turntables: a scene rendered all around its vertical axis, as PNG frames, GIF and MP4.

The cameras are viewdiff.cameras.orbits.orbit's (a circle around +z, the normalised scenes' up) with
a centred pinhole of the given field of view; they are written to cameras.json beside the frames.
MP4 needs the ``imageio-ffmpeg`` package (its wheel ships an ffmpeg binary); without it only the GIF
is written, and the command says so.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from viewdiff.cameras.cameras_json import write_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.scene.render import Backend, render


@dataclass
class Turntable:
    """Rendered frames and the cameras they were rendered with."""

    frames: np.ndarray  # (V, H, W, 3) uint8
    K: Tensor  # (V, 3, 3)
    w2c: Tensor  # (V, 4, 4)


def turntable_cameras(
    num_views: int, elevation_deg: float, radius: float, size: int, fov_deg: float
) -> tuple[Tensor, Tensor]:
    """K (V, 3, 3) and w2c (V, 4, 4) of square views on an orbit around the origin."""
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    w2c = orbit(num_views, elevation_deg, radius)
    K = intrinsics_from_fov(fov_deg, size, size).expand(num_views, 3, 3).clone()
    return K, w2c


def render_turntable(
    scene: GaussianScene,
    num_views: int = 60,
    elevation_deg: float = 30.0,
    radius: float = 4.0,
    size: int = 256,
    fov_deg: float = 48.0,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    backend: Backend = "auto",
    progress: bool = True,
) -> Turntable:
    """Render ``scene`` from ``num_views`` cameras evenly spaced on an orbit."""
    K, w2c = turntable_cameras(num_views, elevation_deg, radius, size, fov_deg)
    frames = []
    with torch.no_grad():
        for view in tqdm(range(num_views), desc="render turntable", disable=not progress):
            rgb = render(scene, K[view], w2c[view], size, size, background, backend).rgb
            frames.append((rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())
    return Turntable(np.stack(frames), K, w2c)


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 20.0) -> None:
    """An endlessly looping GIF of frames (V, H, W, 3) uint8."""
    images = [Image.fromarray(frame) for frame in frames]
    duration = max(int(round(1000.0 / fps)), 10)  # GIF delays are whole hundredths of seconds
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)


def mp4_available() -> bool:
    """Whether MP4 can be encoded here (imageio-ffmpeg and its bundled ffmpeg)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 20.0) -> None:
    """An H.264 MP4 of frames (V, H, W, 3) uint8, through imageio-ffmpeg's ffmpeg."""
    if not mp4_available():
        raise RuntimeError("MP4 needs the imageio-ffmpeg package: pip install imageio-ffmpeg")
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    # yuv420p needs even sides; 2 keeps even sizes as they are (ffmpeg resizes odd ones).
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", macro_block_size=2, quality=8
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def save_turntable(
    out_dir: str | Path, turntable: Turntable, fps: float = 20.0, mp4: bool = True
) -> list[Path]:
    """Write frames/frame_XXX.png, turntable.gif, turntable.mp4 (if possible), cameras.json."""
    out_dir = Path(out_dir)
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    written = []
    for index, frame in enumerate(turntable.frames):
        written.append(out_dir / "frames" / f"frame_{index:03d}.png")
        Image.fromarray(frame).save(written[-1])
    write_gif(out_dir / "turntable.gif", turntable.frames, fps)
    written.append(out_dir / "turntable.gif")
    if mp4 and mp4_available():
        write_mp4(out_dir / "turntable.mp4", turntable.frames, fps)
        written.append(out_dir / "turntable.mp4")
    size_hw = turntable.frames.shape[1:3]
    write_cameras(out_dir / "cameras.json", turntable.K, turntable.w2c, size_hw)
    written.append(out_dir / "cameras.json")
    return written
