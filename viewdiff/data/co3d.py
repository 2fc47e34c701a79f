"""The CO3Dv2 on-disk format: read a category's annotations into OpenCV cameras; encode its files.

Layout (facebookresearch/co3d, README "Dataset format"; the same for our synthetic copies)::

    <root>/<category>/frame_annotations.jgz      gzip'd JSON list of FrameAnnotation
    <root>/<category>/sequence_annotations.jgz   gzip'd JSON list of SequenceAnnotation
    <root>/<category>/set_lists/set_lists_<subset>.json   {"train"|"val"|"test": [[seq, n, path]]}
    <root>/<category>/<sequence>/{images,masks,depths,depth_masks}/, pointcloud.ply
    <root>/<category>/captions.json              ours: {sequence: [caption, ...]} (optional)

Annotation paths are relative to ``<root>``. Cameras are PyTorch3D NDC (``X_cam = X_world @ R + T``)
in ``ndc_isotropic`` (CO3Dv2) or ``ndc_norm_image_bounds`` (CO3Dv1, and the default of CO3D's
``ViewpointAnnotation`` when ``intrinsics_format`` is absent); they are converted once, here,
through ``viewdiff.cameras.co3d_to_opencv``, to pixels of the stored image.

What a missing file does: a frame whose image is missing is dropped; a missing mask or depth file
leaves the frame with ``mask_path`` / ``depth_path`` None. All three are counted in ``ReadReport``
(masks are needed to crop around the object later, so callers may drop those frames too).
"""

from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from viewdiff.cameras import INTRINSICS_FORMATS, RIGID_TOLERANCE, co3d_to_opencv
from viewdiff.ply import read_ply

FRAME_ANNOTATIONS = "frame_annotations.jgz"
SEQUENCE_ANNOTATIONS = "sequence_annotations.jgz"
CAPTIONS = "captions.json"
SPLITS = ("train", "val", "test")
# co3d/dataset/data_types.py, ViewpointAnnotation.intrinsics_format: the legacy (v1) default.
DEFAULT_INTRINSICS_FORMAT = "ndc_norm_image_bounds"


class Co3dFormatError(ValueError):
    """An annotation file that does not follow the CO3D format; the message names file and frame."""


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value to compare with
class Co3dFrame:
    """One annotated frame, its camera in OpenCV pixels of the stored image."""

    frame_number: int
    image_path: Path  # absolute
    image_size_hw: tuple[int, int]  # (H, W) of the stored image, from the annotation
    K: torch.Tensor  # (3, 3) float64
    w2c: torch.Tensor  # (4, 4) float64, OpenCV world-to-camera
    mask_path: Path | None  # None if not annotated or the file is missing
    depth_path: Path | None
    depth_scale: float | None  # depth annotation's scale_adjustment
    depth_mask_path: Path | None = None  # CO3D's valid-depth mask


@dataclass(frozen=True, eq=False)
class Co3dSequence:
    """One object's sequence: its frames sorted by frame number, point cloud and captions."""

    category: str
    name: str
    frames: tuple[Co3dFrame, ...]
    point_cloud_path: Path | None
    captions: tuple[str, ...]


@dataclass
class ReadReport:
    """What ``read_category`` read and what it skipped, for logs."""

    sequences: int = 0
    frames: int = 0
    frames_missing_files: int = 0  # image file missing: frame dropped
    sequences_without_frames: int = 0  # selected sequences left with no frame
    frames_missing_mask: int = 0  # mask annotated but its file missing: kept, mask_path None
    frames_missing_depth: int = 0  # same for the depth map
    frames_without_viewpoint: int = 0  # no camera annotated: dropped
    frames_not_selected: int = 0  # outside the set list's split or the requested sequences

    def __str__(self) -> str:
        return ", ".join(
            f"{f.name.replace('_', ' ')}: {getattr(self, f.name)}" for f in fields(self)
        )


class _RawFrame(NamedTuple):
    """A frame annotation, validated, before its camera is converted and its files checked."""

    sequence_name: str
    frame_number: int
    image_path: str
    image_size_hw: tuple[int, int]
    viewpoint: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str] | None
    mask_path: str | None
    depth: tuple[str, float, str | None] | None


def read_jgz(path: str | Path, source: str | None = None) -> Any:
    """The JSON document inside a gzip'd file, with errors that name the file."""
    source = source or str(path)
    try:
        with gzip.open(path, "rb") as stream:
            return json.loads(stream.read().decode("utf-8"))
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise Co3dFormatError(f"{source}: not a readable gzip file ({error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Co3dFormatError(f"{source}: not JSON ({error})") from None


def write_jgz(path: str | Path, document: Any) -> None:
    """Write a JSON document gzip'd like CO3D's .jgz, byte-identical for identical documents."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as f:
        f.write(json.dumps(document).encode("utf-8"))


def _field(mapping: Any, key: str, where: str, parent: str = "") -> Any:
    """``mapping[key]``, or an error naming the dotted key that is missing."""
    name = f"{parent}.{key}" if parent else key
    if not isinstance(mapping, dict):
        raise Co3dFormatError(f"{where}: {parent or 'entry'} must be a JSON object")
    if key not in mapping:
        raise Co3dFormatError(f"{where}: missing key '{name}'")
    return mapping[key]


def _numbers(value: Any, shape: tuple[int, ...], name: str, where: str) -> np.ndarray:
    """A finite float64 array of the given shape, or an error naming the field."""
    text = "x".join(map(str, shape))
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise Co3dFormatError(f"{where}: {name} must be {text} numbers") from None
    if array.shape != shape:
        raise Co3dFormatError(f"{where}: {name} must be {text}, got shape {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise Co3dFormatError(f"{where}: {name} has non-finite values")
    return array


def _string(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise Co3dFormatError(f"{where}: {name} must be a non-empty string")
    return value


def _parse_viewpoint(viewpoint: Any, where: str) -> tuple:
    """(R, T, focal_length, principal_point, intrinsics_format) of a viewpoint annotation."""
    R = _numbers(_field(viewpoint, "R", where, "viewpoint"), (3, 3), "viewpoint.R", where)
    T = _numbers(_field(viewpoint, "T", where, "viewpoint"), (3,), "viewpoint.T", where)
    focal = _field(viewpoint, "focal_length", where, "viewpoint")
    focal = _numbers(focal, (2,), "viewpoint.focal_length", where)
    principal = _field(viewpoint, "principal_point", where, "viewpoint")
    principal = _numbers(principal, (2,), "viewpoint.principal_point", where)
    if not (focal > 0).all():
        raise Co3dFormatError(
            f"{where}: viewpoint.focal_length must be positive, got {focal.tolist()}"
        )
    drift = np.abs(R @ R.T - np.eye(3)).max()
    if drift > RIGID_TOLERANCE or abs(np.linalg.det(R) - 1) > RIGID_TOLERANCE:
        raise Co3dFormatError(
            f"{where}: viewpoint.R is not a rotation (|R R^T - I| = {drift:.2g}, "
            f"det = {np.linalg.det(R):.6g})"
        )
    fmt = viewpoint.get("intrinsics_format", DEFAULT_INTRINSICS_FORMAT)
    if fmt not in INTRINSICS_FORMATS:
        raise Co3dFormatError(
            f"{where}: viewpoint.intrinsics_format {fmt!r} is not one of {INTRINSICS_FORMATS}"
        )
    return R, T, focal, principal, fmt


def _parse_frame(entry: Any, index: int, source: str) -> _RawFrame:
    """Validate one FrameAnnotation; extra keys at any level are ignored."""
    where = f"{source}: entry {index}"
    sequence = _string(_field(entry, "sequence_name", where), "sequence_name", where)
    number = _field(entry, "frame_number", where)
    if isinstance(number, bool) or not isinstance(number, int):
        raise Co3dFormatError(f"{where} of sequence {sequence}: frame_number must be an integer")
    where = f"{source}: frame {number} of sequence {sequence}"
    image = _field(entry, "image", where)
    image_path = _string(_field(image, "path", where, "image"), "image.path", where)
    size = _field(image, "size", where, "image")
    if not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise Co3dFormatError(f"{where}: image.size must be [H, W], two positive integers")
    viewpoint = entry.get("viewpoint")
    viewpoint = None if viewpoint is None else _parse_viewpoint(viewpoint, where)
    mask, mask_path = entry.get("mask"), None
    if mask is not None:
        mask_path = _string(_field(mask, "path", where, "mask"), "mask.path", where)
    depth_annotation, depth = entry.get("depth"), None
    if depth_annotation is not None:
        depth_path = _string(_field(depth_annotation, "path", where, "depth"), "depth.path", where)
        scale = _field(depth_annotation, "scale_adjustment", where, "depth")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise Co3dFormatError(f"{where}: depth.scale_adjustment must be a positive number")
        depth_mask = depth_annotation.get("mask_path")
        depth_mask = None if depth_mask is None else _string(depth_mask, "depth.mask_path", where)
        depth = (depth_path, float(scale), depth_mask)
    return _RawFrame(sequence, number, image_path, (size[0], size[1]), viewpoint, mask_path, depth)


def _opencv_cameras(frames: list[_RawFrame]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(K, w2c) of every frame, converted in one call per (image size, intrinsics format)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, frame in enumerate(frames):
        groups[(frame.image_size_hw, frame.viewpoint[4])].append(i)
    cameras: list = [None] * len(frames)
    for (size_hw, fmt), members in groups.items():
        R, T, focal, principal = (
            torch.from_numpy(np.stack([frames[i].viewpoint[k] for i in members])) for k in range(4)
        )
        K, w2c = co3d_to_opencv(R, T, focal, principal, size_hw, fmt)  # (n, 3, 3), (n, 4, 4)
        for j, i in enumerate(members):
            cameras[i] = (K[j].clone(), w2c[j].clone())
    return cameras


class _Listing:
    """File existence by directory listing: one ``scandir`` per folder, not one stat per file."""

    def __init__(self) -> None:
        self._folders: dict[str, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        folder = str(path.parent)
        if folder not in self._folders:
            try:
                with os.scandir(folder) as entries:
                    self._folders[folder] = frozenset(e.name for e in entries)
            except OSError:
                self._folders[folder] = frozenset()
        return path.name in self._folders[folder]


def list_categories(root: str | Path) -> list[str]:
    """Sorted names of the folders under ``root`` that hold a frame_annotations.jgz."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CO3D root not found: {root}")
    return sorted(p.parent.name for p in root.glob(f"*/{FRAME_ANNOTATIONS}"))


def list_subsets(root: str | Path, category: str) -> list[str]:
    """Subset names of a category's set lists (``set_lists/set_lists_<subset>.json``)."""
    folder = Path(root) / category / "set_lists"
    return sorted(p.stem.removeprefix("set_lists_") for p in folder.glob("set_lists_*.json"))


def _read_json_object(path: Path, source: str, layout: str) -> dict:
    """A JSON file that must hold one object (``layout`` describes it in errors)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Co3dFormatError(f"{source}: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise Co3dFormatError(f"{source}: must be a JSON object {layout}")
    return document


def read_set_list(
    root: str | Path, category: str, subset: str
) -> dict[str, list[tuple[str, int, str]]]:
    """A category's set list ``{split: [(sequence_name, frame_number, image_path)]}``."""
    path = Path(root) / category / "set_lists" / f"set_lists_{subset}.json"
    source = f"{category}/set_lists/{path.name}"
    if not path.is_file():
        raise FileNotFoundError(
            f"{source}: no such set list; subsets of {category}: {list_subsets(root, category)}"
        )
    document = _read_json_object(path, source, "{split: [...]}")
    lists = {}
    for split, entries in document.items():
        if not isinstance(entries, list):
            raise Co3dFormatError(f"{source}: '{split}' must be a list")
        for i, entry in enumerate(entries):
            if not (
                isinstance(entry, list | tuple)
                and len(entry) >= 2
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
            ):
                raise Co3dFormatError(
                    f"{source}: '{split}' entry {i} must be [sequence_name, frame_number, path]"
                )
        lists[split] = [(e[0], e[1], e[2] if len(e) > 2 else "") for e in entries]
    return lists


def _selected_frames(
    root: Path, category: str, subset: str | None, split: str | None
) -> set[tuple[str, int]] | None:
    """(sequence, frame_number) pairs of a subset's split (all its splits if None), or None."""
    if subset is None:
        if split is not None:
            raise ValueError(f"split {split!r} needs a subset (a set list) to select from")
        return None
    lists = read_set_list(root, category, subset)
    if split is not None and split not in lists:
        raise ValueError(
            f"{category}/set_lists/set_lists_{subset}.json has no split {split!r}; "
            f"it has {sorted(lists)}"
        )
    chosen = [lists[split]] if split is not None else lists.values()
    return {(entry[0], entry[1]) for entries in chosen for entry in entries}


def read_captions(root: str | Path, category: str) -> dict[str, tuple[str, ...]]:
    """``{sequence_name: captions}`` from ``<category>/captions.json``; empty when there is none."""
    path = Path(root) / category / CAPTIONS
    source = f"{category}/{CAPTIONS}"
    if not path.is_file():
        return {}
    document = _read_json_object(path, source, "{sequence_name: [captions]}")
    captions = {}
    for name, texts in document.items():
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise Co3dFormatError(f"{source}: sequence {name}: captions must be strings")
        captions[name] = tuple(texts)
    return captions


def _point_cloud_paths(root: Path, category: str) -> dict[str, str]:
    """``{sequence_name: point cloud path}`` from sequence_annotations.jgz (if there is one)."""
    path = root / category / SEQUENCE_ANNOTATIONS
    if not path.is_file():
        return {}
    source = f"{category}/{SEQUENCE_ANNOTATIONS}"
    entries = read_jgz(path, source)
    if not isinstance(entries, list):
        raise Co3dFormatError(f"{source}: must be a JSON list of sequence annotations")
    paths = {}
    for index, entry in enumerate(entries):
        where = f"{source}: entry {index}"
        name = _string(_field(entry, "sequence_name", where), "sequence_name", where)
        point_cloud = entry.get("point_cloud")
        if point_cloud is not None:
            where = f"{source}: sequence {name}"
            paths[name] = _string(_field(point_cloud, "path", where, "point_cloud"), "path", where)
    return paths


def _annotated_frames(
    root: Path, category: str, selected: set | None, wanted: set[str] | None, report: ReadReport
) -> tuple[list[_RawFrame], set[str]]:
    """The category's validated frames that pass the filters, and the selected sequence names."""
    source = f"{category}/{FRAME_ANNOTATIONS}"
    path = root / category / FRAME_ANNOTATIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CO3D frame annotations for category {category!r}")
    entries = read_jgz(path, source)
    if not isinstance(entries, list):
        raise Co3dFormatError(f"{source}: must be a JSON list of frame annotations")
    frames, seen, names, chosen = [], set(), set(), set()
    for index, entry in enumerate(entries):
        frame = _parse_frame(entry, index, source)
        key = (frame.sequence_name, frame.frame_number)
        if key in seen:
            raise Co3dFormatError(
                f"{source}: frame {key[1]} of sequence {key[0]} is annotated twice"
            )
        seen.add(key)
        names.add(frame.sequence_name)
        if (wanted is not None and key[0] not in wanted) or (
            selected is not None and key not in selected
        ):
            report.frames_not_selected += 1
            continue
        chosen.add(key[0])
        if frame.viewpoint is None:
            report.frames_without_viewpoint += 1
        else:
            frames.append(frame)
    if wanted is not None and wanted - names:
        raise ValueError(f"{source}: no sequences named {sorted(wanted - names)}")
    return frames, chosen


def _frame_with_files(
    raw: _RawFrame, K: torch.Tensor, w2c: torch.Tensor, root: Path, files: _Listing,
    report: ReadReport,
) -> Co3dFrame | None:  # fmt: skip
    """The frame with its files resolved: None without image; no mask / depth path if missing."""
    image_path = root / raw.image_path
    if not files.exists(image_path):
        report.frames_missing_files += 1
        return None
    mask_path = None if raw.mask_path is None else root / raw.mask_path
    if mask_path is not None and not files.exists(mask_path):
        report.frames_missing_mask += 1
        mask_path = None
    depth_path = depth_scale = depth_mask_path = None
    if raw.depth is not None:
        depth_path, depth_scale = root / raw.depth[0], raw.depth[1]
        if not files.exists(depth_path):
            report.frames_missing_depth += 1
            depth_path = depth_scale = None
        elif raw.depth[2] is not None and files.exists(root / raw.depth[2]):
            depth_mask_path = root / raw.depth[2]
    return Co3dFrame(
        raw.frame_number, image_path, raw.image_size_hw, K, w2c,
        mask_path, depth_path, depth_scale, depth_mask_path,
    )  # fmt: skip


def read_category(
    root: str | Path,
    category: str,
    subset: str | None = None,
    split: str | None = None,
    sequences: Sequence[str] | None = None,
) -> tuple[list[Co3dSequence], ReadReport]:
    """The sequences of one category (sorted by name), optionally one set list's split only.

    ``subset`` names a set list (``set_lists_<subset>.json``) and ``split`` one of its lists
    ("train", "val", "test"; all of them when None); ``sequences`` keeps only those sequences
    (each must exist). Sequences left without frames are dropped and counted.
    """
    root = Path(root).resolve()
    report = ReadReport()
    selected = _selected_frames(root, category, subset, split)
    wanted = None if sequences is None else set(sequences)
    raw_frames, names = _annotated_frames(root, category, selected, wanted, report)
    files = _Listing()
    by_sequence: dict[str, list[Co3dFrame]] = defaultdict(list)
    for raw, (K, w2c) in zip(raw_frames, _opencv_cameras(raw_frames), strict=True):
        frame = _frame_with_files(raw, K, w2c, root, files, report)
        if frame is not None:
            by_sequence[raw.sequence_name].append(frame)
    point_clouds = _point_cloud_paths(root, category)
    captions = read_captions(root, category)
    result = []
    for name in sorted(names):
        frames = sorted(by_sequence.get(name, []), key=lambda f: f.frame_number)
        if not frames:
            report.sequences_without_frames += 1
            continue
        cloud = root / point_clouds.get(name, f"{category}/{name}/pointcloud.ply")
        cloud = cloud if files.exists(cloud) else None
        result.append(Co3dSequence(category, name, tuple(frames), cloud, captions.get(name, ())))
    report.sequences = len(result)
    report.frames = sum(len(s.frames) for s in result)
    return result, report


def read_point_cloud(path: str | Path) -> torch.Tensor:
    """The x, y, z columns of a CO3D pointcloud.ply: (P, 3) float64 world points."""
    vertices = read_ply(path)
    missing = [axis for axis in "xyz" if axis not in vertices]
    if missing:
        raise ValueError(f"{path}: point cloud has no {', '.join(missing)} property")
    return torch.from_numpy(np.stack([vertices[a] for a in "xyz"], axis=-1).astype(np.float64))


def read_depth(path: str | Path, scale: float) -> torch.Tensor:
    """CO3D depth (H, W) float32: the 16-bit PNG's bits read as float16, times scale_adjustment.

    The encoding of pytorch3d implicitron's ``_load_16big_png_depth``; non-finite values
    (and 0) mean no depth.
    """
    with Image.open(path) as image:
        bits = np.array(image, dtype=np.uint16)
    depth = bits.view(np.float16).astype(np.float32) * np.float32(scale)
    depth[~np.isfinite(depth)] = 0.0
    return torch.from_numpy(depth)


def write_depth(path: str | Path, depth: np.ndarray, scale: float) -> None:
    """Write depth (H, W) as CO3D does: ``depth / scale`` as float16 bits in a 16-bit PNG."""
    bits = (np.asarray(depth, dtype=np.float32) / np.float32(scale)).astype(np.float16)
    Image.fromarray(bits.view(np.uint16)).save(path)


def read_mask(path: str | Path) -> torch.Tensor:
    """A CO3D foreground mask (H, W) float32 in [0, 1] (stored as P(fg) * 255)."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("L"), dtype=np.float32) / 255.0)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a foreground probability (H, W) in [0, 1] as an 8-bit PNG of P(fg) * 255."""
    probability = np.clip(np.asarray(mask, dtype=np.float64), 0.0, 1.0)
    Image.fromarray(np.round(probability * 255.0).astype(np.uint8)).save(path)


def write_depth_mask(path: str | Path, valid: np.ndarray) -> None:
    """Write CO3D's valid-depth mask (H, W) as a 1-bit PNG."""
    Image.fromarray(np.asarray(valid, dtype=bool)).save(path)
