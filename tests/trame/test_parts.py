"""TrAME's pure parts: DDCM step, schedules, keyframe / context plan, token alignment."""

import math

import pytest
import torch
from transformers import CLIPTokenizer

from viewdiff.cameras.orbits import orbit
from viewdiff.trame.attention_control import changed_words, token_alignment
from viewdiff.trame.ddcm import anchor, clean_estimate, ddcm_target, noisy_pair
from viewdiff.trame.plan import angle_between_deg, check_schedule, plan_views, schedule_value


def _tensors(seed: int, count: int):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(count)]


def test_ddcm_target_is_infedits_formula_at_kappa_one():
    src0, tgt0, noise, eps_s, eps_t = _tensors(0, 5)
    alpha_bar = torch.tensor(0.37, dtype=torch.float64)
    x_s, x_t = noisy_pair(src0, tgt0, noise, alpha_bar)
    assert torch.allclose(x_s, alpha_bar.sqrt() * src0 + (1 - alpha_bar).sqrt() * noise)
    infedit = src0 + ((x_t - x_s) - (1 - alpha_bar).sqrt() * (eps_t - eps_s)) / alpha_bar.sqrt()
    assert torch.allclose(ddcm_target(src0, x_s, x_t, eps_s, eps_t, alpha_bar, 1.0), infedit)
    # kappa weighs the source's own reconstruction error.
    src_cons = clean_estimate(x_s, eps_s, alpha_bar)
    tgt_cons = clean_estimate(x_t, eps_t, alpha_bar)
    half = ddcm_target(src0, x_s, x_t, eps_s, eps_t, alpha_bar, 0.5)
    assert torch.allclose(half, tgt_cons + 0.5 * (src0 - src_cons))


def test_identical_branches_give_the_source_back():
    src0, noise, eps = _tensors(1, 3)
    alpha_bar = torch.tensor(0.6, dtype=torch.float64)
    x_s, x_t = noisy_pair(src0, src0, noise, alpha_bar)
    assert torch.equal(x_s, x_t)
    assert torch.allclose(ddcm_target(src0, x_s, x_t, eps, eps, alpha_bar, 1.0), src0)


def test_anchor_interpolates_between_estimate_and_render():
    tgt0, render = _tensors(2, 2)
    assert torch.equal(anchor(tgt0, render, 1.0), tgt0)
    assert torch.equal(anchor(tgt0, render, 0.0), render)
    assert torch.allclose(anchor(tgt0, render, 0.3), 0.7 * render + 0.3 * tgt0)


def test_schedules_are_piecewise_constant_and_checked():
    schedule = ((0, 0.95), (10, 0.3))
    assert [schedule_value(schedule, k) for k in (0, 9, 10, 19)] == [0.95, 0.95, 0.3, 0.3]
    for bad in ((), ((1, 0.5),), ((0, 1.0), (0, 2.0)), ((0, math.nan),)):
        with pytest.raises(ValueError, match="trame.kappa"):
            check_schedule(bad, "trame.kappa")


def test_plan_keyframes_and_contexts():
    w2c = orbit(16, 25.0, 4.4)  # 22.5 degrees apart
    plan = plan_views(w2c, every=2, max_angle_deg=25.0)
    assert plan.keyframes == list(range(0, 16, 2))
    assert plan.contexts == [[k, k + 1] for k in range(0, 16, 2)]
    covered = sorted(set(plan.keyframes) | {v for c in plan.contexts for v in c})
    assert covered == list(range(16))


def test_plan_falls_back_to_keyframes_when_views_are_far_apart():
    w2c = orbit(8, 25.0, 4.4)  # 45 degrees apart
    assert angle_between_deg(torch.linalg.inv(w2c[0]), torch.linalg.inv(w2c[1])) > 25.0
    plan = plan_views(w2c, every=2, max_angle_deg=25.0)
    assert plan.keyframes == list(range(8)) and plan.contexts == []
    # A wider tolerance keeps the contexts.
    assert plan_views(w2c, every=2, max_angle_deg=60.0).contexts == [
        [k, k + 1] for k in (0, 2, 4, 6)
    ]
    with pytest.raises(ValueError, match="keyframe interval"):
        plan_views(w2c, every=0)


def test_token_alignment_of_a_word_swap(tiny_sd):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer")
    shared, index = token_alignment(tokenizer, "a red ball", "a blue ball")
    source_ids = tokenizer("a red ball", padding="max_length", max_length=77).input_ids
    target_ids = tokenizer("a blue ball", padding="max_length", max_length=77).input_ids
    different = [i for i in range(77) if source_ids[i] != target_ids[i]]
    assert not shared[different].any() and shared.sum() == 77 - len(different)
    assert all(source_ids[index[i]] == target_ids[i] for i in range(77) if shared[i])
    assert changed_words(tokenizer, "a red ball", "a blue ball") == different
    # An inserted word shifts the alignment of what follows it.
    shared, index = token_alignment(tokenizer, "a ball", "a big ball")
    ids = tokenizer("a big ball").input_ids
    ball = ids.index(tokenizer("ball").input_ids[1])
    assert shared[ball] and index[ball] == ball - (len(ids) - len(tokenizer("a ball").input_ids))
