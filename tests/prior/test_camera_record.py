"""The record of training cameras: statistics, resume round trip, and the backfill command."""

import json
import math

import pytest
import torch

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands.camera_record import main
from viewdiff.prior.camera_record import CameraRecord, camera_quantities


def test_quantities_of_known_cameras():
    w2c = orbit(4, 30.0, 4.0)
    K = intrinsics_from_fov(40.0, 64, 64).expand(4, 3, 3)
    values = camera_quantities(K, w2c, 64)
    assert values["radius"].tolist() == pytest.approx([4.0] * 4, abs=1e-5)
    assert values["elevation_deg"].tolist() == pytest.approx([30.0] * 4, abs=1e-4)
    assert values["fov_deg"].tolist() == pytest.approx([40.0] * 4, abs=1e-4)
    half_width = 4.0 * math.tan(math.radians(20.0))
    assert values["half_width"].tolist() == pytest.approx([half_width] * 4, abs=1e-4)


def test_statistics_and_round_trip():
    record = CameraRecord()
    K = intrinsics_from_fov(40.0, 64, 64)
    record.add(K.expand(2, 3, 3), torch.stack([orbit(1, 10.0, 3.0)[0], orbit(1, 20.0, 5.0)[0]]), 64)
    record.add(K.expand(1, 1, 3, 3), orbit(1, 30.0, 4.0)[None], 64)
    summary = record.summary()
    assert summary["views"] == 3
    radius = summary["radius"]
    assert radius["mean"] == pytest.approx(4.0, abs=1e-5)
    assert radius["std"] == pytest.approx(math.sqrt(2 / 3), abs=1e-5)
    assert radius["min"] == pytest.approx(3.0, abs=1e-5) and radius["max"] == pytest.approx(
        5.0, abs=1e-5
    )
    assert radius["range"] == pytest.approx([3.0, 5.0], abs=1e-5)  # mean +- 2 std, clipped
    again = CameraRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.summary() == summary
    assert CameraRecord.from_dict(None).count == 0
    with pytest.raises(ValueError, match="no cameras"):
        CameraRecord().summary()


def test_backfill_command_writes_the_file(tiny_export, heldout_shards, tmp_path, capsys):
    import shutil

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    assert main([str(export), "--shards", str(heldout_shards)]) == 0
    document = json.loads((export / "camera_distribution.json").read_text())
    assert document["views"] == 2 * 3  # 2 objects x the export's 3 views
    assert "training views" in capsys.readouterr().out
