"""CO3D's annotation documents, validated: the gzip'd JSON container (.jgz), plain JSON objects,
a FrameAnnotation's fields and the point clouds of the sequence annotations (facebookresearch/co3d,
``co3d/dataset/data_types.py``).

Every error is a ``Co3dFormatError`` whose message names the file and the frame; extra keys at any
level are ignored. Cameras stay PyTorch3D NDC here; ``co3d.py`` converts them to OpenCV.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from viewdiff.cameras.checks import RIGID_TOLERANCE
from viewdiff.cameras.conventions import INTRINSICS_FORMATS

SEQUENCE_ANNOTATIONS = "sequence_annotations.jgz"
# co3d/dataset/data_types.py, ViewpointAnnotation.intrinsics_format: the legacy (v1) default.
DEFAULT_INTRINSICS_FORMAT = "ndc_norm_image_bounds"


class Co3dFormatError(ValueError):
    """An annotation file that does not follow the CO3D format; the message names file and frame."""


class RawFrame(NamedTuple):
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


def read_json_object(path: Path, source: str, layout: str) -> dict:
    """A JSON file that must hold one object (``layout`` describes it in errors)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Co3dFormatError(f"{source}: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise Co3dFormatError(f"{source}: must be a JSON object {layout}")
    return document


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


def parse_frame(entry: Any, index: int, source: str) -> RawFrame:
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
    return RawFrame(sequence, number, image_path, (size[0], size[1]), viewpoint, mask_path, depth)


def read_point_cloud_paths(root: Path, category: str) -> dict[str, str]:
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
