"""Timestep schedules: ranges, annealing, DreamTime's monotone descent, one t per group."""

import pytest
import torch

from viewdiff.sds.config import SdsConfig
from viewdiff.sds.schedules import (
    annealed,
    dreamtime_prior,
    dreamtime_timestep,
    object_timesteps,
    t_range,
)


def test_annealed_values_follow_threestudio():
    schedule = [100, 0.98, 0.5, 300]
    assert annealed(0.7, (), 50) == 0.7
    assert annealed(0.7, schedule, 0) == 0.98
    assert annealed(0.7, schedule, 200) == pytest.approx(0.74)
    assert annealed(0.7, schedule, 300) == 0.5
    assert annealed(0.7, schedule, 10_000) == 0.5
    values = [annealed(0.0, schedule, step) for step in range(0, 400, 7)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone, as claimed
    with pytest.raises(ValueError, match="start_step, start, end, end_step"):
        annealed(0.7, (1, 2), 0)


def test_random_timesteps_stay_in_range_and_repeat_with_the_seed():
    config = SdsConfig(t_min=0.02, t_max=0.98)
    draws = torch.cat([object_timesteps(config, s, 4, 1000, torch.Generator().manual_seed(s))
                       for s in range(200)])  # fmt: skip
    assert draws.shape == (800,) and draws.min() >= 20 and draws.max() <= 980
    assert draws.unique().numel() > 300
    again = object_timesteps(config, 5, 4, 1000, torch.Generator().manual_seed(5))
    assert torch.equal(again, draws[20:24])


def test_annealed_range_narrows():
    config = SdsConfig(t_max_anneal=(0, 0.98, 0.3, 100))
    assert t_range(config, 0) == (0.02, 0.98)
    assert t_range(config, 100) == pytest.approx((0.02, 0.3))
    late = object_timesteps(config, 150, 64, 1000, torch.Generator().manual_seed(0))
    assert late.max() <= 300
    with pytest.raises(ValueError, match="need 0 <= min <= max <= 1"):
        t_range(SdsConfig(t_min=0.9, t_max=0.5), 0)


def test_dreamtime_descends_from_high_to_low_t():
    ts = [dreamtime_timestep(step, 500, 1000, 0.02, 0.98) for step in range(500)]
    assert all(a >= b for a, b in zip(ts, ts[1:], strict=False))
    assert ts[0] >= 900 and ts[-1] <= 50
    # Most steps are spent where the prior is flat (DreamTime's [m2, m1] = [500, 800]).
    inside = sum(500 <= t <= 800 for t in ts) / len(ts)
    assert inside > 0.4
    prior = dreamtime_prior(1000)
    assert prior.sum().item() == pytest.approx(1.0)
    assert prior[600] == prior[700] > prior[900] > prior[990]
    config = SdsConfig(schedule="dreamtime", steps=500)
    groups = object_timesteps(config, 10, 3, 1000, torch.Generator())
    assert groups.tolist() == [ts[10]] * 3  # deterministic, shared by the groups
