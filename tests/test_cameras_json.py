"""cameras.json: round trip and errors that name the file and the view."""

import json

import pytest
import torch

from viewdiff.cameras.cameras_json import (
    cameras_from_json,
    cameras_to_json,
    read_cameras,
    write_cameras,
)
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit


def test_round_trip_is_exact(tmp_path):
    w2c = orbit(5, 20.0, 3.0, dtype=torch.float64)
    K = intrinsics_from_fov(45.0, 48, 64).double().expand(5, 3, 3)
    write_cameras(tmp_path / "cameras.json", K, w2c, (48, 64))
    K_back, w2c_back, size_hw = read_cameras(tmp_path / "cameras.json")
    assert size_hw == (48, 64)
    assert torch.equal(K_back, K) and torch.equal(w2c_back, w2c)


def document(**changes):
    base = cameras_to_json(intrinsics_from_fov(45.0, 8, 8)[None], orbit(1), (8, 8))
    return {**base, **changes}


def view(**changes):
    return {**document()["views"][0], **changes}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (document(convention="opengl"), "expected convention 'opencv'"),
        (document(height=0), "'height' must be a positive integer"),
        (document(views=[]), "'views' must be a non-empty list"),
        (document(views=[view(), {"K": view()["K"]}]), "view 1: missing 'w2c'"),
        (
            document(views=[view(K=[[1, 2], [3, 4]])]),
            r"view 0: 'K' must be 3x3, got shape \[2, 2\]",
        ),
        (document(views=[view(K="eye")]), "view 0: 'K' is not a 3x3 matrix"),
        (
            document(views=[view(w2c=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])]),
            "not rigid",
        ),
        (
            document(views=[view(w2c=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]])]),
            "last row",
        ),
    ],
)
def test_bad_documents_name_the_view(doc, message):
    with pytest.raises(ValueError, match=message):
        cameras_from_json(json.loads(json.dumps(doc)), source="traj.json")


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="cameras file not found: .*absent.json"):
        read_cameras(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        read_cameras(tmp_path / "broken.json")
