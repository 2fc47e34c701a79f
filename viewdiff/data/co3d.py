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
through ``viewdiff.cameras.conventions.co3d_to_opencv``, to pixels of the stored image.

The annotation documents are validated in ``co3d_annotations.py``, set lists select frames in
``co3d_set_lists.py``, and the depth, mask and point-cloud files are decoded in ``co3d_files.py``.

What a missing file does: a frame whose image is missing is dropped; a missing mask or depth file
leaves the frame with ``mask_path`` / ``depth_path`` None. All three are counted in ``ReadReport``
(masks are needed to crop around the object later, so callers may drop those frames too).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from viewdiff.cameras.conventions import co3d_to_opencv
from viewdiff.data.co3d_annotations import (
    Co3dFormatError,
    RawFrame,
    parse_frame,
    read_jgz,
    read_json_object,
    read_point_cloud_paths,
)
from viewdiff.data.co3d_set_lists import selected_frames

FRAME_ANNOTATIONS = "frame_annotations.jgz"
CAPTIONS = "captions.json"


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


def _opencv_cameras(frames: list[RawFrame]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(K, w2c) of every frame, converted in one call per (image size, intrinsics format)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for i, frame in enumerate(frames):
        # _annotated_frames keeps only frames with a viewpoint (it counts the others)
        assert frame.viewpoint is not None
        arrays.append(frame.viewpoint[:4])  # R, T, focal length, principal point
        groups[(frame.image_size_hw, frame.viewpoint[4])].append(i)
    cameras: list = [None] * len(frames)
    for (size_hw, fmt), members in groups.items():
        R, T, focal, principal = (
            torch.from_numpy(np.stack(column))
            for column in zip(*[arrays[i] for i in members], strict=True)
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


def read_captions(root: str | Path, category: str) -> dict[str, tuple[str, ...]]:
    """``{sequence_name: captions}`` from ``<category>/captions.json``; empty when there is none."""
    path = Path(root) / category / CAPTIONS
    source = f"{category}/{CAPTIONS}"
    if not path.is_file():
        return {}
    document = read_json_object(path, source, "{sequence_name: [captions]}")
    captions = {}
    for name, texts in document.items():
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise Co3dFormatError(f"{source}: sequence {name}: captions must be strings")
        captions[name] = tuple(texts)
    return captions


def _annotated_frames(
    root: Path, category: str, selected: set | None, wanted: set[str] | None, report: ReadReport
) -> tuple[list[RawFrame], set[str]]:
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
        frame = parse_frame(entry, index, source)
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
    raw: RawFrame, K: torch.Tensor, w2c: torch.Tensor, root: Path, files: _Listing,
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
    selected = selected_frames(root, category, subset, split)
    wanted = None if sequences is None else set(sequences)
    raw_frames, names = _annotated_frames(root, category, selected, wanted, report)
    files = _Listing()
    by_sequence: dict[str, list[Co3dFrame]] = defaultdict(list)
    for raw, (K, w2c) in zip(raw_frames, _opencv_cameras(raw_frames), strict=True):
        frame = _frame_with_files(raw, K, w2c, root, files, report)
        if frame is not None:
            by_sequence[raw.sequence_name].append(frame)
    point_clouds = read_point_cloud_paths(root, category)
    captions = read_captions(root, category)
    result = []
    for name in sorted(names):
        frames = sorted(by_sequence.get(name, []), key=lambda f: f.frame_number)
        if not frames:
            report.sequences_without_frames += 1
            continue
        cloud_path = root / point_clouds.get(name, f"{category}/{name}/pointcloud.ply")
        cloud = cloud_path if files.exists(cloud_path) else None
        result.append(Co3dSequence(category, name, tuple(frames), cloud, captions.get(name, ())))
    report.sequences = len(result)
    report.frames = sum(len(s.frames) for s in result)
    return result, report
