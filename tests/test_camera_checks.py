"""One camera checker for every edge: finite, positive focal lengths, rigid rotations."""

import json
import math

import pytest
import torch

from viewdiff.cameras.cameras_json import cameras_from_json, cameras_to_json
from viewdiff.cameras.checks import camera_problem, check_cameras, usable_cameras
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.inference.trajectory import Trajectory, check_trajectory


def _good():
    return intrinsics_from_fov(40.0, 64, 64).double(), orbit(1, 30.0, 4.0)[0].double()


def _bad(kind: str):
    K, w2c = _good()
    K, w2c = K.clone(), w2c.clone()
    if kind == "nan K":
        K[0, 2] = math.nan
    elif kind == "inf w2c":
        w2c[1, 3] = math.inf
    elif kind == "zero focal":
        K[0, 0] = 0.0
    elif kind == "negative focal":
        K[1, 1] = -50.0
    elif kind == "K last row":
        K[2, 2] = 2.0
    elif kind == "w2c last row":
        w2c[3, 0] = 0.5
    elif kind == "reflection":
        w2c[:3, 0] = -w2c[:3, 0]  # orthonormal, det -1
    elif kind == "scaled":
        w2c[:3, :3] = 1.01 * w2c[:3, :3]
    return K, w2c


CASES = {
    "nan K": "K has NaN or inf",
    "inf w2c": "w2c has NaN or inf",
    "zero focal": "focal lengths must be positive",
    "negative focal": "focal lengths must be positive",
    "K last row": "last row of K",
    "w2c last row": "last row of w2c",
    "reflection": "w2c is not rigid",
    "scaled": "w2c is not rigid",
}


def test_a_good_camera_has_no_problem():
    assert camera_problem(*_good()) is None
    check_cameras(intrinsics_from_fov(40.0, 64, 64).expand(8, 3, 3), orbit(8, 30.0, 4.0), "orbit")


@pytest.mark.parametrize("kind", list(CASES))
def test_each_bad_camera_is_named(kind):
    assert CASES[kind] in camera_problem(*_bad(kind))
    K, w2c = _good()
    Ks, w2cs = torch.stack([K, _bad(kind)[0], K]), torch.stack([w2c, _bad(kind)[1], w2c])
    with pytest.raises(ValueError, match=r"cams\.json: view 1: "):
        check_cameras(Ks, w2cs, "cams.json")


def test_the_batched_check_agrees_with_the_one_camera_check():
    K, w2c = _good()
    kinds = list(CASES)
    Ks = torch.stack([K] + [_bad(kind)[0] for kind in kinds])
    w2cs = torch.stack([w2c] + [_bad(kind)[1] for kind in kinds])
    expected = [camera_problem(k, w) is None for k, w in zip(Ks, w2cs, strict=True)]
    assert usable_cameras(Ks, w2cs).tolist() == expected == [True] + [False] * len(kinds)
    near = w2c.clone()
    near[:3, :3] *= 1 + 2e-5  # within the tolerance: usable for both
    assert usable_cameras(K[None], near[None])[0] and camera_problem(K, near) is None


@pytest.mark.parametrize("kind", ["nan K", "zero focal", "reflection"])
def test_cameras_json_and_trajectories_refuse_them(kind):
    K, w2c = _bad(kind)
    document = json.loads(json.dumps(cameras_to_json(K[None], w2c[None], (64, 64))))
    with pytest.raises(ValueError, match=f"f.json: view 0: {CASES[kind]}"):
        cameras_from_json(document, "f.json")
    with pytest.raises(ValueError, match=f"given: view 0: {CASES[kind]}"):
        check_trajectory(Trajectory(K[None].float(), w2c[None].float(), (64, 64)), "given")
