"""The view-reliance measure: the shipped prior predicts a view better from its own object's views
than from another object's, and the measure's bookkeeping holds."""

import math
from pathlib import Path

import pytest

from viewdiff.config import DataConfig
from viewdiff.inference.heldout import heldout_objects
from viewdiff.prior.load import load_export
from viewdiff.toy.assets import TOY_MULTIVIEW
from viewdiff.toy.view_reliance import Reliance, _partner, view_reliance


def test_the_shipped_prior_reads_its_objects_views(toy_heldout_shards: Path):
    prior = load_export(TOY_MULTIVIEW)
    data = DataConfig(shards=str(toy_heldout_shards), image_size=64, n_views=4, num_workers=0,
                      crop="object")  # fmt: skip
    objects = list(heldout_objects(data, 0, None))  # 4 per shape
    (result,) = view_reliance(prior, objects, timesteps=(500,), draws=1)
    assert result.timestep == 500 and all(len(v) == 12 for v in result.errors.values())
    # Another object's views mislead it (measured: about 7 dB on this prior).
    contrast, se = result.ratio_db("contrast")
    assert contrast > 2.0 and se > 0, (contrast, se)
    assert result.mean("own") < result.mean("other")


def test_ratios_are_per_object_and_carry_their_standard_error():
    errors = {"own": [1.0, 1.0], "other": [10.0, 100.0], "shuffled": [1.0, 1.0],
              "joint": [1.0, 1.0], "alone": [1.0, 1.0], "copy": [2.0, 2.0]}  # fmt: skip
    result = Reliance(250, errors)
    assert result.ratio_db("contrast")[0] == pytest.approx(15.0)
    assert result.ratio_db("contrast")[1] == pytest.approx(5.0)  # std 7.07 / sqrt(2)
    assert result.summary()["gain"] == 0.0 and result.summary()["copy"] == 2.0
    assert result.summary()["pose_use"] == 0.0 and result.summary()["pose_use_se"] == 0.0
    assert math.isnan(Reliance(250, {k: v[:1] for k, v in errors.items()}).ratio_db("gain")[1])


def test_the_stand_in_shares_the_caption_else_the_shape():
    objects = [
        {"prompt": "a red ball", "category": "ball"},
        {"prompt": "a blue ball", "category": "ball"},
        {"prompt": "a red ball", "category": "ball"},
        {"prompt": "a red box", "category": "box"},
    ]
    assert [_partner(objects, i) for i in range(3)] == [2, 2, 0]
    with pytest.raises(ValueError, match="a red box"):
        _partner(objects, 3)
