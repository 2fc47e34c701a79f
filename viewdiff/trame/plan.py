"""TrAME's pure bookkeeping: piecewise-constant schedules and the keyframe / context plan.

Schedules (f_k, kappa_k, per-step 3D updates, attention-control switches) are lists of
``(from_step, value)`` pairs: the value of the last pair whose step is <= k (the official
configs' ``[step, value, step, value, ...]`` lists). The plan splits an orbit of V views into
keyframes (every ``every``-th) and contexts (the views from one keyframe to the next); a context
view more than ``max_angle_deg`` from its keyframe is edited with the keyframes instead (TrAME's
fallback when views are far apart).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Schedule = Sequence[tuple[int, float]]


def check_schedule(schedule: Schedule, name: str) -> None:
    """A ValueError naming ``name`` unless the steps start at 0 and increase."""
    steps = [int(s) for s, _ in schedule]
    if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"{name}: steps must start at 0 and increase, got {steps}")
    bad = [v for _, v in schedule if not math.isfinite(float(v))]
    if bad:
        raise ValueError(f"{name}: values must be finite, got {bad}")


def schedule_value(schedule: Schedule, step: int) -> float:
    """The value at trajectory step ``step``: that of the last pair with from_step <= step."""
    value = schedule[0][1]
    for start, v in schedule:
        if start <= step:
            value = v
    return float(value)


@dataclass(frozen=True)
class ViewPlan:
    """Which views are edited together: keyframes in one batch, then each context with its
    keyframe (the keyframe leads the batch; only the other views take the context's result)."""

    keyframes: list[int]
    contexts: list[list[int]]  # [keyframe, view, view, ...]

    def batches(self) -> list[tuple[list[int], list[int]]]:
        """(views in the batch, views that take its result): the keyframes, then each context."""
        return [(self.keyframes, self.keyframes)] + [(c, c[1:]) for c in self.contexts]


def angle_between_deg(c2w_a: Tensor, c2w_b: Tensor) -> float:
    """The angle (degrees) between two cameras' viewing directions."""
    a, b = c2w_a[:3, 2], c2w_b[:3, 2]
    cosine = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    return math.degrees(math.acos(float(cosine.clamp(-1.0, 1.0))))


def plan_views(w2c: Tensor, every: int, max_angle_deg: float = 25.0) -> ViewPlan:
    """Keyframes every ``every``-th view of the (ordered) cameras w2c (V, 4, 4), contexts of the
    views in between; context views too far from their keyframe join the keyframes."""
    views = w2c.shape[0]
    if every < 1:
        raise ValueError(f"keyframe interval must be >= 1, got {every}")
    if views < 1:
        raise ValueError("no views to plan")
    c2w = torch.linalg.inv(w2c.double())
    keyframes = list(range(0, views, every))
    contexts: list[list[int]] = []
    far: list[int] = []
    for key in keyframes:
        members = [v for v in range(key + 1, min(key + every, views))]
        near: list[int] = []
        for v in members:
            (near if angle_between_deg(c2w[key], c2w[v]) <= max_angle_deg else far).append(v)
        if near:
            contexts.append([key, *near])
    return ViewPlan(sorted(keyframes + far), contexts)
