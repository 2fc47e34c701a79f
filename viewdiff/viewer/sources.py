"""What a PATH given to ``infer.py view`` is, read into plain arrays (no viser here).

The kinds, as the commands write them (docs/viewer.md shows what each looks like):

    scene       a 3DGS PLY file (ours or any 3DGS tool's), or a folder with scene.ply in it
                (``infer.py fit``); a cameras.json beside it adds its turntable cameras, and
                frames/frame_*.png beside that their pictures (``render``, ``fit``, ``sds``)
    generation  views/*.png + cameras.json (``sample``, ``condition``, ``edit``), or
                inputs/*.png + cameras.json (``invert``: the views it inverted)
    sds         an ``infer.py sds`` folder: scene.ply (checkpoint/scene.ply while it still runs),
                the turntable's cameras and frames, progress/step-*.png, sds.json
    edit-scene  an ``infer.py edit-scene`` folder: the edited scene.ply, the original scene
                (the path edit.json records), progress/step-*.png, edit.json

A folder of generation folders (``sample --prompts``) is each of them. Anything else, and any
file that cannot be read, is a ``ViewerInputError`` naming the file and what was expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from viewdiff.cameras.cameras_json import read_cameras
from viewdiff.inference.outputs import INPUTS_DIR, VIEWS_DIR
from viewdiff.inference.read_generation import read_generation_views
from viewdiff.scene.checkpoint import CHECKPOINT, SCENE_FILE, STATE_FILE
from viewdiff.scene.gaussians import GaussianScene, read_gaussian_ply
from viewdiff.scene.sh import sh0_to_rgb

SourceKind = Literal["scene", "generation", "sds", "edit-scene"]

CAMERAS_FILE, FRAMES_DIR, PROGRESS_DIR = "cameras.json", "frames", "progress"
RUN_FILES = ("generation.json", "edit.json", "sds.json", "fit.json", "inversion.json")
"""The JSON a run folder describes itself with, the first found is shown beside it."""

KINDS_HELP = (
    "a 3DGS .ply file, a generation folder (views/*.png + cameras.json), an infer.py sds folder "
    "(sds.json, scene.ply) or an infer.py edit-scene folder (edit.json, scene.ply)"
)


class ViewerInputError(ValueError):
    """A PATH the viewer cannot show: names the file and what was expected."""


@dataclass(frozen=True)
class Splats:
    """3D Gaussians as a viewer draws them, activated: SH degree 0 colour, no view dependence."""

    centers: np.ndarray  # (P, 3) float32
    covariances: np.ndarray  # (P, 3, 3) float32, R S S^T R^T
    rgbs: np.ndarray  # (P, 3) float32 in [0, 1]
    opacities: np.ndarray  # (P, 1) float32 in [0, 1]

    def __len__(self) -> int:
        return self.centers.shape[0]


@dataclass(frozen=True)
class View:
    """One OpenCV camera (K in pixels, w2c in the normalised scene) and its picture, if any."""

    name: str
    K: np.ndarray  # (3, 3)
    w2c: np.ndarray  # (4, 4)
    size_hw: tuple[int, int]
    image_path: Path | None = None
    image: np.ndarray | None = None  # (H, W, 3) uint8, for views made in memory (live panel)

    def pixels(self) -> np.ndarray | None:
        """The picture (H, W, 3) uint8 (read from its file when it has one), or None."""
        if self.image is not None:
            return self.image
        return None if self.image_path is None else read_picture(self.image_path)


@dataclass(frozen=True)
class ProgressStep:
    """One saved progress picture of an SDS or edit-scene run."""

    step: int
    path: Path


@dataclass(frozen=True)
class Source:
    """One thing to show: a scene, posed views, a run's progress, an edit's original."""

    kind: SourceKind
    path: Path
    name: str
    splats: Splats | None = None
    views: tuple[View, ...] = ()
    progress: tuple[ProgressStep, ...] = ()
    before: Splats | None = None  # edit-scene: the original scene
    info: dict[str, Any] = field(default_factory=dict)  # the run's JSON (sds.json, ...)
    notes: tuple[str, ...] = ()  # what is missing, shown beside it


def read_picture(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8, or a ViewerInputError naming it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ViewerInputError(f"{path}: not a readable image ({error})") from None


def splats_from_scene(scene: GaussianScene) -> Splats:
    """The activated Gaussians of a scene: covariances from scales and quaternions (3DGS Eq. 6),
    colours from the degree-0 SH coefficient, opacities through the sigmoid."""
    scene = scene.detach().to("cpu")
    rgbs = sh0_to_rgb(scene.f_dc).clamp(0.0, 1.0)
    return Splats(
        centers=scene.means.float().numpy(),
        covariances=scene.covariances().float().numpy(),
        rgbs=rgbs.float().numpy(),
        opacities=scene.opacities().float().numpy()[:, None],
    )


def read_splats(path: Path) -> Splats:
    """The Gaussians of a 3DGS PLY file, or a ViewerInputError naming it."""
    try:
        scene = read_gaussian_ply(path)
    except (OSError, ValueError, IndexError, KeyError, UnicodeDecodeError) as error:
        message = str(error)
        where = "" if str(path) in message else f"{path}: "
        raise ViewerInputError(f"{where}{message} (expected a 3D Gaussian splatting PLY)") from None
    return splats_from_scene(scene)


def read_views(cameras: Path, images: Sequence[Path] | None = None) -> tuple[View, ...]:
    """The cameras of a cameras.json, each with its picture when ``images`` are given (one per
    camera, in order); a ViewerInputError names the file that does not fit."""
    try:
        K, w2c, size_hw = read_cameras(cameras)
    except ValueError as error:
        raise ViewerInputError(str(error)) from None
    if images is not None and len(images) != K.shape[0]:
        raise ViewerInputError(
            f"{cameras}: {K.shape[0]} cameras for {len(images)} pictures; they must match"
        )
    return tuple(
        View(
            name=f"view {index}" if images is None else images[index].stem,
            K=K[index].numpy(),
            w2c=w2c[index].numpy(),
            size_hw=(int(size_hw[0]), int(size_hw[1])),
            image_path=None if images is None else Path(images[index]),
        )
        for index in range(K.shape[0])
    )


def _pngs(folder: Path) -> list[Path]:
    """The PNG files of a folder in name order (none if it is no folder)."""
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def turntable_views(folder: Path) -> tuple[View, ...]:
    """The cameras of folder/cameras.json, with frames/*.png as their pictures when those are
    one per camera at the cameras' size (the turntables of render, fit and sds)."""
    cameras = folder / CAMERAS_FILE
    if not cameras.is_file():
        return ()
    views = read_views(cameras)
    frames = _pngs(folder / FRAMES_DIR)
    if len(frames) != len(views):
        return views
    try:
        with Image.open(frames[0]) as first:
            size_hw = (first.height, first.width)
    except OSError as error:
        raise ViewerInputError(f"{frames[0]}: not a readable image ({error})") from None
    if size_hw != views[0].size_hw:
        return views  # frames of another size are not these cameras' pictures
    return read_views(cameras, frames)


def progress_steps(folder: Path) -> tuple[ProgressStep, ...]:
    """progress/step-N.png of a run, by step."""
    steps = []
    for path in _pngs(folder / PROGRESS_DIR):
        match = re.fullmatch(r"step-(\d+)", path.stem)
        if match:
            steps.append(ProgressStep(int(match.group(1)), path))
    return tuple(sorted(steps, key=lambda s: s.step))


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or a ViewerInputError naming the file."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ViewerInputError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(document, dict):
        raise ViewerInputError(f"{path}: expected a JSON object")
    return document


def _run_info(folder: Path) -> dict[str, Any]:
    """The run's own JSON (the first of RUN_FILES there), or {}."""
    for name in RUN_FILES:
        if (folder / name).is_file():
            return _read_json(folder / name)
    return {}


def _checkpoint_format(folder: Path) -> str:
    """The format of folder/checkpoint/state.json ('' without one): tells a running SDS or
    edit-scene run from another folder before its final files exist."""
    path = folder / CHECKPOINT / STATE_FILE
    if not path.is_file():
        return ""
    try:
        return str(json.loads(path.read_text()).get("format", ""))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return ""


def folder_kind(folder: Path) -> SourceKind | None:
    """Which kind of run folder ``folder`` is, or None."""
    pictures = _pngs(folder / VIEWS_DIR) or _pngs(folder / INPUTS_DIR)
    if (folder / CAMERAS_FILE).is_file() and pictures:
        return "generation"
    state = _checkpoint_format(folder)
    if (folder / "sds.json").is_file() or state.startswith("viewdiff.sds"):
        return "sds"
    has_scene = (folder / SCENE_FILE).is_file() or (folder / CHECKPOINT / SCENE_FILE).is_file()
    if ((folder / "edit.json").is_file() and has_scene) or state.startswith("viewdiff.trame"):
        return "edit-scene"
    if (folder / SCENE_FILE).is_file():
        return "scene"
    return None


def classify(path: Path) -> SourceKind:
    """The kind of a PATH, or a ViewerInputError naming it and the kinds it could be."""
    if not path.exists():
        raise ViewerInputError(f"{path}: no such file or folder (expected {KINDS_HELP})")
    if path.is_file():
        if path.suffix.lower() == ".ply":
            return "scene"
        raise ViewerInputError(f"{path}: not a .ply file (expected {KINDS_HELP})")
    kind = folder_kind(path)
    if kind is None:
        raise ViewerInputError(f"{path}: none of the folders infer.py view shows ({KINDS_HELP})")
    return kind


def _scene_file(folder: Path) -> Path:
    """A run's scene.ply, or its checkpoint's while the run has not finished."""
    final = folder / SCENE_FILE
    return final if final.is_file() else folder / CHECKPOINT / SCENE_FILE


def _original_scene(folder: Path, recorded: str | None) -> Path | None:
    """The scene an edit started from: the path edit.json records, as given (relative to where
    the command ran), or relative to the run folder or beside it; None if it is nowhere."""
    if not recorded:
        return None
    path = Path(recorded)
    for candidate in (path, folder / path, folder.parent / path):
        if candidate.is_file():
            return candidate
    return None


def load_source(path: Path, name: str | None = None) -> Source:
    """Read one PATH (see the module's docstring) into a Source."""
    path = Path(path)
    kind = classify(path)
    name = name or path.resolve().name
    if kind == "scene":
        ply = path if path.is_file() else path / SCENE_FILE
        return Source(kind, path, name, splats=read_splats(ply),
                      views=turntable_views(ply.parent), info=_run_info(ply.parent))  # fmt: skip
    if kind == "generation":
        if _pngs(path / VIEWS_DIR):
            try:
                generation = read_generation_views(path, flag="infer.py view")
            except ValueError as error:
                raise ViewerInputError(str(error)) from None
            views = read_views(path / CAMERAS_FILE, generation.paths)
        else:  # infer.py invert: the views it inverted
            views = read_views(path / CAMERAS_FILE, _pngs(path / INPUTS_DIR))
        return Source(kind, path, name, views=views, info=_run_info(path))
    notes: list[str] = []
    scene_file = _scene_file(path)
    splats = read_splats(scene_file) if scene_file.is_file() else None
    if splats is None:
        notes.append(f"no {SCENE_FILE} yet (nor {CHECKPOINT}/{SCENE_FILE})")
    elif scene_file.parent.name == CHECKPOINT:
        notes.append(f"the run has not finished: showing its last checkpoint ({scene_file})")
    info = _run_info(path)
    before = None
    if kind == "edit-scene":
        original = _original_scene(path, info.get("scene"))
        if original is None:
            notes.append(f"the original scene {info.get('scene')!r} is not found: no before")
        else:
            before = read_splats(original)
    return Source(kind, path, name, splats=splats, views=turntable_views(path),
                  progress=progress_steps(path), before=before, info=info,
                  notes=tuple(notes))  # fmt: skip


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """The PATHs to load: a folder of generation folders (``sample --prompts``) becomes them."""
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and folder_kind(path) is None:
            children = [child for child in sorted(path.iterdir()) if child.is_dir()]
            runs = [child for child in children if folder_kind(child) is not None]
            if runs:
                expanded += runs
                continue
        expanded.append(path)
    return expanded


def load_sources(paths: Sequence[Path]) -> list[Source]:
    """Every PATH read (all of them checked before anything is shown), with unique names."""
    expanded = expand_paths(paths)
    names: list[str] = []
    for path in expanded:
        base = path.resolve().name or str(path)
        name, count = base, 2
        while name in names:
            name, count = f"{base} ({count})", count + 1
        names.append(name)
    return [load_source(path, name) for path, name in zip(expanded, names, strict=True)]
