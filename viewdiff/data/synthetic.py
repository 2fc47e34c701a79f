"""Procedural objects, ray-cast along hand-held orbits and written in the exact CO3Dv2 layout.

Tests and demos need posed multi-view captures offline, with cameras known exactly. Each sequence
is one object of ``viewdiff.data.synthetic_objects`` in a style: "co3d" (boxes, cans, balls,
stacked composites, textured, on a checkered ground) or "toy" (the toy world's single-hue
shapes before plain backdrops), in its own random world frame. The primitives and the exact
renders are viewdiff/data/raycast.py's; this file films the objects along hand-held orbits and
writes what it films.

The cameras of a capture are ``synthetic_cameras.py``'s, the point cloud and key points
``synthetic_surface.py``'s.

Conventions of the written files (those of CO3Dv2, see viewdiff/data/co3d.py):
- masks are the object only (ground and backdrop are background), P(fg) * 255 in 8-bit PNG;
- depth is CO3D's: z-depth in world units of whatever is hit first (object or ground), since
  CO3D's depth maps come from multi-view stereo of the whole scene; 0 (and depth_masks 0) where
  only backdrop is seen; stored as float16 bits of ``depth / scale_adjustment``;
- pointcloud.ply holds points on the object's outer surface, in the sequence's world frame;
- ``synthetic_objects.json`` (ours, not CO3D's) gives every object's key points in world:
  ``centre_world`` (inside the object), ``surface_keypoints_world`` (on its surface: first hits of
  14 rays shot at the centre) and ``box_corners_world`` (tight box; on the surface only for the
  ``box`` category, ``box_corners_on_surface``). A point on or inside the object projects into
  the mask in every frame (the mask is the silhouette; the whole object is always in view), to
  within a pixel at the silhouette's edge, as masks are sampled at pixel centres;
- ``<sequence>/cameras.json`` (ours) holds the exact OpenCV cameras the frames were rendered with,
  and ``sequence_object(category, index, seed, style)`` rebuilds a sequence's object, so that
  tests can compare what a reader makes of the CO3D annotations with the truth.

Every sequence draws from its own generators, seeded by (seed, category, sequence index).
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from viewdiff.cameras.cameras_json import write_cameras
from viewdiff.cameras.conventions import opencv_to_co3d
from viewdiff.data.co3d_annotations import write_jgz
from viewdiff.data.co3d_files import write_depth, write_depth_mask, write_mask
from viewdiff.data.raycast import SyntheticObject, render_object
from viewdiff.data.synthetic_cameras import hand_held_orbit, sample_intrinsics
from viewdiff.data.synthetic_objects import STYLES, make_object
from viewdiff.data.synthetic_surface import object_keypoints, surface_points
from viewdiff.ply import write_ply

OBJECTS_FILE = "synthetic_objects.json"
FPS = 30.0  # frame_timestamp = frame_number / FPS, as frames of a video


def _sequence_sets(count: int) -> list[str]:
    """CO3Dv2's sequence sets: the last sequence is "dev", the one before "test", others "train"."""
    sets = ["train"] * count
    if count >= 2:
        sets[-1] = "dev"
    if count >= 3:
        sets[-2] = "test"
    return sets


def _write_sequence(
    folder: Path, category: str, obj: SyntheticObject, frames: int, size_hw: tuple[int, int],
    rng: np.random.Generator, sequence_set: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Render and write one sequence's frames; their FrameAnnotation dicts."""
    name = folder.name
    for sub in ("images", "masks", "depths", "depth_masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    K = sample_intrinsics(rng, size_hw)
    w2c = hand_held_orbit(obj, frames, K, size_hw, rng)
    # The exact OpenCV cameras, beside CO3D's NDC annotations (ours; CO3D readers ignore it).
    write_cameras(folder / "cameras.json", torch.from_numpy(K).expand(frames, 3, 3),
                  torch.from_numpy(w2c), size_hw)  # fmt: skip
    R, T, focal, principal = opencv_to_co3d(
        torch.from_numpy(K).expand(frames, 3, 3), torch.from_numpy(w2c), size_hw, "ndc_isotropic"
    )
    annotations = []
    for i in range(frames):
        image, mask, depth = render_object(obj, K, w2c[i], size_hw)
        stem, prefix = f"frame{i + 1:06d}", f"{category}/{name}"
        Image.fromarray(image).save(folder / "images" / f"{stem}.jpg", quality=95, subsampling=0)
        write_mask(folder / "masks" / f"{stem}.png", mask)
        write_depth(folder / "depths" / f"{stem}.jpg.geometric.png", depth, obj.scale)
        write_depth_mask(folder / "depth_masks" / f"{stem}.png", depth > 0)
        # CO3D's meta.frame_type: "<sequence set>_<known|unseen>"; every 4th dev/test frame unseen.
        seen = "unseen" if sequence_set != "train" and i % 4 == 0 else "known"
        annotations.append({
            "sequence_name": name, "frame_number": i, "frame_timestamp": i / FPS,
            "image": {"path": f"{prefix}/images/{stem}.jpg", "size": list(size_hw)},
            "depth": {"path": f"{prefix}/depths/{stem}.jpg.geometric.png",
                      "scale_adjustment": obj.scale,
                      "mask_path": f"{prefix}/depth_masks/{stem}.png"},
            "mask": {"path": f"{prefix}/masks/{stem}.png", "mass": float(mask.sum())},
            "viewpoint": {"R": R[i].tolist(), "T": T[i].tolist(),
                          "focal_length": focal[i].tolist(),
                          "principal_point": principal[i].tolist(),
                          "intrinsics_format": "ndc_isotropic"},
            "meta": {"frame_type": f"{sequence_set}_{seen}"},
        })  # fmt: skip
    return annotations


def _set_lists(frames: list[dict[str, Any]], sets: dict[str, str]) -> dict[str, dict[str, list]]:
    """CO3Dv2 set lists: fewview_dev / fewview_test train on the "train" sequences and test on the
    "dev" / "test" ones; manyview_dev_0 splits the first dev sequence into known and unseen."""
    entry = {(f["sequence_name"], f["frame_number"]): f for f in frames}
    rows = {s: [[k[0], k[1], f["image"]["path"]] for k, f in entry.items() if sets[k[0]] == s]
            for s in ("train", "dev", "test")}  # fmt: skip
    lists = {"fewview_dev": {"train": rows["train"], "val": [], "test": rows["dev"]}}
    if rows["test"]:
        lists["fewview_test"] = {"train": rows["train"], "val": [], "test": rows["test"]}
    dev = [name for name, s in sets.items() if s == "dev"]
    if dev:
        first = [r for r in rows["dev"] if r[0] == dev[0]]
        unseen = [r for r in first if entry[r[0], r[1]]["meta"]["frame_type"].endswith("unseen")]
        known = [r for r in first if r not in unseen]
        lists["manyview_dev_0"] = {"train": known, "val": [], "test": unseen}
    return lists


def _eval_batches(test: list[list], frames: list[dict[str, Any]], known_views: int) -> list:
    """CO3D eval batches: an unseen target frame of the test split, then known source frames."""
    types = {(f["sequence_name"], f["frame_number"]): f["meta"]["frame_type"] for f in frames}
    is_unseen = [types[r[0], r[1]].endswith("unseen") for r in test]
    batches = []
    for row, unseen in zip(test, is_unseen, strict=True):
        if unseen:
            known = [r for r, u in zip(test, is_unseen, strict=True) if r[0] == row[0] and not u]
            batches.append([row, *known[:known_views]])
    return batches


def _write_json(path: Path, document: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=indent), encoding="utf-8")


def _rng(seed: int, category: str, index: int, stream: int) -> np.random.Generator:
    """A generator per (seed, category, sequence, stream): 0 object, 1 cameras, 2 points, 3 name."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), index, stream])


def sequence_object(category: str, index: int, seed: int, style: str = "co3d") -> SyntheticObject:
    """The object of a category's ``index``-th sequence in a dataset made with ``seed``."""
    return make_object(category, _rng(seed, category, index, 0), style, index)


def _write_category(
    out: Path, category: str, sequences: int, frames: int, size_hw: tuple[int, int],
    seed: int, points: int, progress: tqdm, style: str,
) -> list[str]:  # fmt: skip
    """Write one category's sequences and annotation files; its subset names."""
    folder = out / category
    frame_annotations, sequence_annotations, captions, objects, sets = [], [], {}, {}, {}
    for index, sequence_set in enumerate(_sequence_sets(sequences)):
        name_rng = _rng(seed, category, index, 3)
        name = f"{index + 1}_{name_rng.integers(1000, 99999)}_{name_rng.integers(1000, 99999)}"
        obj = sequence_object(category, index, seed, style)
        camera_rng = _rng(seed, category, index, 1)
        frame_annotations += _write_sequence(
            folder / name, category, obj, frames, size_hw, camera_rng, sequence_set
        )
        cloud, rgb = surface_points(obj, points, _rng(seed, category, index, 2))
        columns = {axis: cloud[:, i].astype(np.float32) for i, axis in enumerate("xyz")}
        columns |= {colour: rgb[:, i] for i, colour in enumerate(("red", "green", "blue"))}
        write_ply(folder / name / "pointcloud.ply", columns)
        sequence_annotations.append({
            "sequence_name": name, "category": category,
            "video": {"path": f"{category}/{name}/video.mp4", "length": frames / FPS},
            "point_cloud": {"path": f"{category}/{name}/pointcloud.ply", "quality_score": 1.0,
                            "n_points": len(cloud)},
            "viewpoint_quality_score": 1.0,
        })  # fmt: skip
        sets[name], captions[name] = sequence_set, [obj.caption]
        keypoints = {key: value.tolist() for key, value in object_keypoints(obj).items()}
        objects[name] = {
            "category": category, "caption": obj.caption, "sequence_set": sequence_set,
            "seed": seed, "index": index, "style": style,
            "scale": obj.scale, "object_to_world": obj.object_to_world.tolist(),
            "box_corners_on_surface": category == "box", **keypoints,
        }  # fmt: skip
        if obj.mark is not None:  # the sided toy world: where its darker side is
            mark = obj.mark
            objects[name]["mark"] = {"direction": mark.direction.tolist(),
                                     "threshold": mark.threshold, "shade": mark.shade}  # fmt: skip
        progress.update()
    write_jgz(folder / "frame_annotations.jgz", frame_annotations)
    write_jgz(folder / "sequence_annotations.jgz", sequence_annotations)
    subsets = _set_lists(frame_annotations, sets)
    for subset, lists in subsets.items():
        _write_json(folder / "set_lists" / f"set_lists_{subset}.json", lists)
        batches = _eval_batches(lists["test"], frame_annotations, 0 if "many" in subset else 2)
        _write_json(folder / "eval_batches" / f"eval_batches_{subset}.json", batches)
    _write_json(folder / "captions.json", captions, indent=1)
    _write_json(folder / OBJECTS_FILE, objects, indent=1)
    return sorted(subsets)


def make_synthetic_dataset(
    out: str | Path,
    categories: Sequence[str] | None = None,
    sequences: int = 2,
    frames: int = 20,
    size_wh: tuple[int, int] = (160, 120),
    seed: int = 0,
    points: int = 2000,
    overwrite: bool = False,
    style: str = "co3d",
) -> Path:
    """Write synthetic objects in the CO3Dv2 layout under ``out``; deterministic from ``seed``.

    ``style`` picks the objects (``STYLES``); ``categories`` defaults to all of that style's.
    """
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; expected one of {tuple(STYLES)}")
    known = STYLES[style]
    categories = list(dict.fromkeys(known if categories is None else categories))
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ValueError(
            f"unknown synthetic categories {unknown} of style {style!r}; expected some of {known}"
        )
    if sequences < 1 or frames < 1 or points < 1:
        raise ValueError(
            f"need sequences, frames and points >= 1, got {sequences}, {frames}, {points}"
        )
    width, height = size_wh
    if width < 8 or height < 8:
        raise ValueError(f"image size must be at least 8x8 pixels, got {width}x{height}")
    out = Path(out)
    for category in categories:
        folder = out / category
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{folder} is not empty (pass overwrite=True to replace it)")
            shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)
    subsets = {}
    with tqdm(total=len(categories) * sequences, desc="synthetic sequences", unit="seq") as bar:
        for category in categories:
            subsets[category] = _write_category(
                out, category, sequences, frames, (height, width), seed, points, bar, style
            )
    index = out / "category_to_subset_name_list.json"  # CO3Dv2's root index of subsets
    listed = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    _write_json(index, dict(sorted({**listed, **subsets}.items())), indent=1)
    return out


def read_synthetic_objects(root: str | Path, category: str) -> dict[str, dict[str, Any]]:
    """``{sequence_name: {...}}`` of ``synthetic_objects.json``, key points as float64 tensors."""
    path = Path(root) / category / OBJECTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no synthetic objects here (not a synthetic dataset?)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    shapes = {"box_corners_world": (8, 3), "centre_world": (3,),
              "surface_keypoints_world": (14, 3), "object_to_world": (4, 4)}  # fmt: skip
    objects = {}
    for name, entry in document.items():
        entry = dict(entry)
        for key, shape in shapes.items():
            try:
                entry[key] = torch.tensor(entry[key], dtype=torch.float64)
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"{path}: sequence {name}: '{key}' missing or not numbers"
                ) from None
            if entry[key].shape != shape:
                raise ValueError(f"{path}: sequence {name}: '{key}' must have shape {shape}")
        objects[name] = entry
    return objects
