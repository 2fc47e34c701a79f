"""Camera groups for score distillation, drawn as the prior's training cameras were.

A group is N cameras looking at the object box centre: one elevation, one radius and one field of
view per group, azimuths evenly spread over 360 degrees from a random offset (the layout of the
prior's training views, which surround the object). Object-centred training crops vary radius
and field of view together, so that the object appears about equally large; when the export
records that size (the view's half width at the box centre) the field of view is derived from
it and the drawn radius instead of being drawn on its own. The ranges come from the export's
``camera_distribution.json`` (``viewdiff.prior.camera_record``), or from the ``sds.*`` keys
when set; an export without the file falls back to the reference's (radius 4, elevation 30-60
degrees) and the export's sampling field of view, with a warning.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.config import SampleConfig
from viewdiff.prior.camera_record import CAMERA_DISTRIBUTION_FILE
from viewdiff.sds.config import SdsConfig

# The reference's cameras around an object (ViewDiff): radius 4, elevation 30-60 degrees.
REFERENCE_RADIUS = (4.0, 4.0)
REFERENCE_ELEVATION_DEG = (30.0, 60.0)


@dataclass(frozen=True)
class CameraRanges:
    """[low, high] of the radius, elevation (degrees) and horizontal fov (degrees) of groups."""

    radius: tuple[float, float]
    elevation_deg: tuple[float, float]
    fov_deg: tuple[float, float]
    source: str  # where the ranges came from, for sds.json
    half_width: tuple[float, float] | None = None  # view half width at the centre, if recorded


def _pair(values: tuple[float, ...], key: str) -> tuple[float, float]:
    """A [low, high] config value, checked."""
    if len(values) != 2 or not values[0] <= values[1]:
        raise ValueError(f"sds.{key} must be [low, high] with low <= high, got {list(values)}")
    return float(values[0]), float(values[1])


def read_camera_distribution(export: Path) -> dict | None:
    """The export's camera_distribution.json, or None when it has none."""
    path = Path(export) / CAMERA_DISTRIBUTION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read: {error}") from None


def camera_ranges(export: Path, sample: SampleConfig, config: SdsConfig) -> CameraRanges:
    """The ranges of camera groups: the sds.* keys where set, else the training cameras."""
    recorded = read_camera_distribution(export)
    half_width = None
    if recorded is None:
        warnings.warn(
            f"{export} has no {CAMERA_DISTRIBUTION_FILE} (exports before it): cameras fall back "
            f"to the reference's radius {REFERENCE_RADIUS[0]}, elevation "
            f"{REFERENCE_ELEVATION_DEG[0]:g}-{REFERENCE_ELEVATION_DEG[1]:g} degrees and the "
            f"export's sample.fov_deg {sample.fov_deg:g}; write the file with `python -m "
            "viewdiff.prior.camera_record EXPORT --shards TRAINING_SHARDS`",
            stacklevel=2,
        )
        defaults = {
            "radius": REFERENCE_RADIUS,
            "elevation_deg": REFERENCE_ELEVATION_DEG,
            "fov_deg": (sample.fov_deg, sample.fov_deg),
        }
        source = "reference (the export records no training cameras)"
    else:
        try:
            defaults = {
                name: tuple(recorded[name]["range"])
                for name in ("radius", "elevation_deg", "fov_deg")
            }
        except (KeyError, TypeError):
            raise ValueError(
                f"{export / CAMERA_DISTRIBUTION_FILE}: no [low, high] ranges"
            ) from None
        source = f"training cameras ({recorded.get('views', '?')} views)"
        if "half_width" in recorded and not config.fov_deg:
            half_width = _pair(tuple(recorded["half_width"]["range"]), "half_width")
    chosen = {}
    for name in ("radius", "elevation_deg", "fov_deg"):
        value = getattr(config, name)
        chosen[name] = _pair(value, name) if value else _pair(defaults[name], name)
        if value:
            source += f", sds.{name}"
    return CameraRanges(
        chosen["radius"], chosen["elevation_deg"], chosen["fov_deg"], source, half_width
    )


def _uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    """A draw from U[low, high]."""
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def sample_camera_groups(
    ranges: CameraRanges,
    n_groups: int,
    n_views: int,
    image_size: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """K (B, N, 3, 3) and w2c (B, N, 4, 4) of B groups of N cameras around the box centre."""
    Ks, w2cs = [], []
    for _ in range(n_groups):
        radius = _uniform(ranges.radius, generator)
        elevation = _uniform(ranges.elevation_deg, generator)
        fov = _uniform(ranges.fov_deg, generator)
        if ranges.half_width is not None:
            half_width = _uniform(ranges.half_width, generator)
            fov = 2.0 * math.degrees(math.atan(half_width / radius))
        offset = _uniform((0.0, 360.0), generator)
        w2cs.append(orbit(n_views, elevation, radius, start_azimuth_deg=offset))
        Ks.append(intrinsics_from_fov(fov, image_size, image_size).expand(n_views, 3, 3))
    return torch.stack(Ks), torch.stack(w2cs)
