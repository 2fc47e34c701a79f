"""The backdrop measure: views of one world-fixed backdrop agree, others do not."""

import dataclasses
import math

import numpy as np
import torch

from viewdiff.data.raycast import render_object
from viewdiff.data.synthetic_objects import make_object
from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.toy.backdrop_check import backdrop_consistency_psnr

HELD_OUT = (3, 7)
CAMERAS = orbit_trajectory(8, 25.0, 4.5, 64, 49.0)


def views(index: int, shape: str = "ball") -> torch.Tensor:
    """8 orbit renders (8, 3, 64, 64) in [0, 1] of a sided object at the world's origin."""
    obj = make_object(shape, np.random.default_rng(index), style="toy_sided", index=index)
    obj = dataclasses.replace(obj, object_to_world=np.eye(4))
    images = [render_object(obj, K.numpy(), w2c.numpy(), (64, 64))[0]
              for K, w2c in zip(CAMERAS.K, CAMERAS.w2c, strict=True)]  # fmt: skip
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def test_views_of_one_world_fixed_backdrop_agree_and_others_do_not():
    one = [backdrop_consistency_psnr(views(i), CAMERAS, HELD_OUT) for i in range(3)]
    assert min(one) > 35.0, one  # 8-bit renders of one backdrop: near exact
    # Every view of another object's world: tones and bright sides differ.
    mixed = torch.stack([views(i)[i] for i in range(8)])
    assert backdrop_consistency_psnr(mixed, CAMERAS, HELD_OUT) < min(one) - 10.0
    # A backdrop that turns with the camera: every view the first one's.
    turning = views(0)[:1].repeat(8, 1, 1, 1)
    assert backdrop_consistency_psnr(turning, CAMERAS, HELD_OUT) < min(one) - 5.0


def test_no_backdrop_in_reach_is_not_a_number():
    images = views(0)
    far = orbit_trajectory(8, 25.0, 4.5, 64, 5.0)  # 5 degree views: no two overlap
    assert math.isnan(backdrop_consistency_psnr(images, far, HELD_OUT))
