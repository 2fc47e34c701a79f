"""Which timestep at which SDS step: pure functions of the step (and a generator).

- ``random``: t uniform in [t_min, t_max] (DreamFusion), each bound optionally annealed
  linearly as threestudio's ``[start_step, start, end, end_step]`` values;
- ``dreamtime``: the deterministic, monotonically non-increasing schedule of DreamTime (Huang et
  al. 2023, "time-prioritised SDS", Eq. 8): t(i) = argmin_t |sum_{t' >= t} p(t') - i / n| with
  the prior p(t) proportional to the paper's W_p: 1 on [m2, m1], Gaussian tails of widths s1
  above m1 and s2 below m2 (m1 = 800, m2 = 500, s1 = 300, s2 = 100 of 1000 timesteps). Large
  t first shapes the object, small t last refines it, as a sampler's T -> 0 order does; random
  t mixes the two at every step, which the TrAME and DreamTime papers show costs quality.

Timesteps are fractions of the training schedule's length T here and become integers in
[0, T - 1] in ``object_timesteps``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from viewdiff.sds.config import SdsConfig

# DreamTime's prior W_p over 1000 training timesteps (the paper's values).
DREAMTIME_M1, DREAMTIME_M2, DREAMTIME_S1, DREAMTIME_S2 = 800.0, 500.0, 300.0, 100.0


def annealed(value: float, anneal: Sequence[float], step: int) -> float:
    """``value``, or threestudio's [start_step, start, end, end_step]: ``start`` until
    start_step, linear to ``end`` at end_step, ``end`` after."""
    if not anneal:
        return value
    if len(anneal) != 4:
        raise ValueError(f"an annealed value is [start_step, start, end, end_step], got {anneal}")
    start_step, start, end, end_step = anneal
    if step <= start_step or end_step <= start_step:
        return start if step <= start_step else end
    fraction = min((step - start_step) / (end_step - start_step), 1.0)
    return start + (end - start) * fraction


def t_range(config: SdsConfig, step: int) -> tuple[float, float]:
    """[t_min, t_max] (fractions of T) of the random schedule at ``step``."""
    low = annealed(config.t_min, config.t_min_anneal, step)
    high = annealed(config.t_max, config.t_max_anneal, step)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(
            f"SDS t range at step {step} is [{low}, {high}]: need 0 <= min <= max <= 1"
        )
    return low, high


def dreamtime_prior(num_train_timesteps: int) -> Tensor:
    """DreamTime's W_p (T,) over the training timesteps, normalised to sum 1 (float64)."""
    scale = num_train_timesteps / 1000.0
    t = torch.arange(num_train_timesteps, dtype=torch.float64)
    m1, m2 = DREAMTIME_M1 * scale, DREAMTIME_M2 * scale
    s1, s2 = DREAMTIME_S1 * scale, DREAMTIME_S2 * scale
    weight = torch.ones_like(t)
    weight = torch.where(t > m1, torch.exp(-((t - m1) ** 2) / (2 * s1**2)), weight)
    weight = torch.where(t < m2, torch.exp(-((t - m2) ** 2) / (2 * s2**2)), weight)
    return weight / weight.sum()


def dreamtime_timestep(
    step: int, total_steps: int, num_train_timesteps: int, low: float, high: float
) -> int:
    """DreamTime's t at ``step`` of ``total_steps``, within [low, high] (fractions of T).

    The prior is restricted to the range and renormalised; step 0 gets the largest t, the last
    step the smallest, and t never increases in between.
    """
    first, last = _bounds(num_train_timesteps, low, high)
    prior = dreamtime_prior(num_train_timesteps)[first : last + 1]
    prior = prior / prior.sum()
    # Mass at or above each t (descending cumulative sum), from first to last.
    above = prior.flip(0).cumsum(0).flip(0)
    target = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return first + int((above - target).abs().argmin())


def _bounds(num_train_timesteps: int, low: float, high: float) -> tuple[int, int]:
    """Integer timesteps [first, last] of the fractions [low, high] of T (threestudio's rule)."""
    first = int(num_train_timesteps * low)
    last = min(int(num_train_timesteps * high), num_train_timesteps - 1)
    return first, max(first, last)


def object_timesteps(
    config: SdsConfig,
    step: int,
    n_objects: int,
    num_train_timesteps: int,
    generator: torch.Generator,
) -> Tensor:
    """One t (B,) long per camera group at ``step``, shared by the group's views."""
    low, high = t_range(config, step)
    if config.schedule == "dreamtime":
        t = dreamtime_timestep(step, config.steps, num_train_timesteps, low, high)
        return torch.full((n_objects,), t, dtype=torch.long)
    if config.schedule != "random":
        raise ValueError(f"unknown SDS schedule {config.schedule!r}; known: random, dreamtime")
    first, last = _bounds(num_train_timesteps, low, high)
    return torch.randint(first, last + 1, (n_objects,), generator=generator)
