"""The cameras a prior was trained on: radius, elevation and field of view, as running statistics.

Score distillation draws its cameras as the prior saw them (``viewdiff.sds.cameras``): a prior
trained on views from 4.4 units at 25 degrees judges views from 2 units at 60 degrees as
out-of-distribution. Training adds every batch's cameras (``CameraRecord.add``); the record
travels in the training state (so a resumed run continues it) and the export writes its summary
as ``camera_distribution.json``. ``python -m viewdiff.prior.camera_record`` writes that file
for an export made before exports carried it, from the shards it was trained on.

Quantities, per view, in the normalised scene: ``radius`` (distance of the camera centre to the
object box centre), ``elevation_deg`` (its angle above the box's z = 0 plane) and ``fov_deg``
(horizontal field of view, 2 atan(W / 2 f_x)) and ``half_width`` (half the width of the view
at the box centre, radius x tan(fov / 2): how large the object appears, which object-centred
crops keep about constant while radius and fov vary together).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from viewdiff.cameras.conventions import camera_centers

CAMERA_DISTRIBUTION_FILE = "camera_distribution.json"
QUANTITIES = ("radius", "elevation_deg", "fov_deg", "half_width")


def camera_quantities(K: Tensor, w2c: Tensor, image_width: int) -> dict[str, Tensor]:
    """Radius, elevation (degrees), horizontal fov (degrees) and half width of the view at the
    box centre, each flat (V,), of cameras K (..., 3, 3), w2c (..., 4, 4) of images
    ``image_width`` pixels wide."""
    centres = camera_centers(w2c.double()).reshape(-1, 3)
    radius = centres.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((centres[:, 2] / radius.clamp_min(1e-12)).clamp(-1, 1)))
    focal = K.double().reshape(-1, 3, 3)[:, 0, 0]
    fov = torch.rad2deg(2.0 * torch.atan(image_width / (2.0 * focal)))
    half_width = radius * image_width / (2.0 * focal)
    return {"radius": radius, "elevation_deg": elevation, "fov_deg": fov, "half_width": half_width}


@dataclass
class CameraRecord:
    """Count, sum, sum of squares, min and max of each quantity over every view seen."""

    count: int = 0
    sums: dict[str, list[float]] = field(
        default_factory=lambda: {name: [0.0, 0.0, math.inf, -math.inf] for name in QUANTITIES}
    )

    def add(self, K: Tensor, w2c: Tensor, image_width: int) -> None:
        """Record cameras K (..., 3, 3), w2c (..., 4, 4) of images ``image_width`` px wide."""
        values = camera_quantities(K, w2c, image_width)
        self.count += int(values["radius"].numel())
        for name, value in values.items():
            total, squares, low, high = self.sums[name]
            self.sums[name] = [
                total + float(value.sum()),
                squares + float(value.square().sum()),
                min(low, float(value.min())),
                max(high, float(value.max())),
            ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (for the training state)."""
        return {"count": self.count, "sums": {k: list(v) for k, v in self.sums.items()}}

    @staticmethod
    def from_dict(values: dict[str, Any] | None) -> CameraRecord:
        """The record of ``to_dict`` (None: an empty record)."""
        if not values:
            return CameraRecord()
        record = CameraRecord(int(values["count"]))
        record.sums.update({k: list(v) for k, v in values["sums"].items()})
        return record

    def summary(self) -> dict[str, Any]:
        """Per quantity its mean, std, min, max and the sampling range [low, high]: mean +- 2
        std, within [min, max] (what ``camera_distribution.json`` holds)."""
        if self.count == 0:
            raise ValueError("no cameras recorded")
        document: dict[str, Any] = {"views": self.count}
        for name, (total, squares, low, high) in self.sums.items():
            mean = total / self.count
            std = math.sqrt(max(squares / self.count - mean * mean, 0.0))
            document[name] = {
                "mean": mean,
                "std": std,
                "min": low,
                "max": high,
                "range": [max(low, mean - 2 * std), min(high, mean + 2 * std)],
            }
        return document


def write_camera_distribution(export: Path, record: CameraRecord) -> Path:
    """Write the record's summary into the export folder; returns the file."""
    path = Path(export) / CAMERA_DISTRIBUTION_FILE
    path.write_text(json.dumps(record.summary(), indent=2) + "\n")
    return path


def record_shards(shards: str, image_size: int, n_views: int, max_samples: int) -> CameraRecord:
    """The cameras of up to ``max_samples`` samples of a shard set (each shard once, in order)."""
    from viewdiff.config import DataConfig
    from viewdiff.data.crops import crop_for
    from viewdiff.data.stream import build_loader  # the data stack only when this runs

    # The cameras as training saw them: cut as the shards were written to be streamed.
    data = DataConfig(shards=shards, image_size=image_size, n_views=n_views, shuffle_buffer=1,
                      crop=crop_for(shards))  # fmt: skip
    loader = build_loader(data, batch_size=1, seed=0, resampled=False, num_workers=0)
    record = CameraRecord()
    for index, batch in enumerate(loader):
        if index >= max_samples:
            break
        record.add(batch["K"], batch["w2c"], image_size)
    if record.count == 0:
        raise ValueError(f"no samples in {shards}")
    return record
