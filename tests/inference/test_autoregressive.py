"""Generating a trajectory's views: one batch, a sliding window, given views, intensity stats."""

import dataclasses
import math

import pytest
import torch

from viewdiff.cameras.pose_features import intensity_stats
from viewdiff.config import SampleConfig
from viewdiff.inference.autoregressive import check_sample_config, generate_views
from viewdiff.inference.trajectory import default_input_camera, orbit_trajectory
from viewdiff.inference.windows import plan_windows

FAST = SampleConfig(num_inference_steps=2, guidance_scale=3.0)


def test_a_sliding_window_gives_every_camera_of_the_trajectory_a_view(prior, recorder):
    trajectory = orbit_trajectory(7, 30.0, 4.0, 64)
    settings = dataclasses.replace(FAST, window_views=3, max_conditions=2)
    model = recorder(prior.model)
    images = generate_views(dataclasses.replace(prior, model=model), ["a red box"], trajectory,
                            settings, [0], show_progress=False)  # fmt: skip
    assert images.shape == (1, 7, 3, 64, 64) and images.abs().max() <= 1
    assert images.flatten(2).std(dim=2).min() > 0  # every view was decoded, none left blank
    windows = plan_windows(trajectory.w2c, None, 3, 2)
    assert len(model.calls) == 2 * len(windows)  # two steps per window
    for window, call in zip(windows, model.calls[::2], strict=True):
        n_known, n_views = len(window.conditions), call["n_views"]
        assert n_views == n_known + len(window.targets)
        rows = 2 * n_views if n_known == 0 else n_views  # guidance only without given views
        assert call["latents"].shape[0] == rows
        # The window's cameras: its conditions first, then its targets, all on the trajectory.
        expected = trajectory.w2c[[*window.conditions, *window.targets]]
        torch.testing.assert_close(call["w2c"][:n_views], expected)
        timesteps = call["timesteps"][:n_views]
        assert (timesteps[:n_known] == 0).all() and (timesteps[n_known:] > 0).all()
    covered = sorted(t for window in windows for t in window.targets)
    assert covered == list(range(7))
    again = generate_views(prior, ["a red box"], trajectory, settings, [0], show_progress=False)
    torch.testing.assert_close(again, images, rtol=0, atol=0)  # same seed, same views


def test_prompts_are_batched_without_changing_their_views(prior):
    trajectory = orbit_trajectory(3, 30.0, 4.0, 64)
    pair = generate_views(prior, ["a blue ball", "a red box"], trajectory, FAST, [4, 9],
                          show_progress=False)  # fmt: skip
    alone = generate_views(prior, ["a red box"], trajectory, FAST, [9], show_progress=False)
    torch.testing.assert_close(pair[1:], alone, rtol=0, atol=2e-4)
    assert not torch.allclose(pair[0], pair[1], atol=1e-2)
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        generate_views(prior, ["a box"], trajectory, FAST, [0, 1])
    with pytest.raises(ValueError, match="sample.window_views must be at least 1"):
        generate_views(prior, ["a box"], trajectory, dataclasses.replace(FAST, window_views=0), [0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"guidance_scale": math.nan}, "sample.guidance_scale must be finite and >= 0, got nan"),
        ({"guidance_scale": -1.0}, "sample.guidance_scale must be finite and >= 0"),
        ({"image_guidance_scale": math.inf}, "sample.image_guidance_scale must be finite"),
        ({"radius": 0.0}, "sample.radius must be finite and positive"),
        ({"fov_deg": math.nan}, "sample.fov_deg must be finite and positive"),
        ({"elevation_deg": math.inf}, "sample.elevation_deg must be finite"),
    ],
)
def test_sampler_numbers_are_checked(change, message):
    with pytest.raises(ValueError, match=message):
        check_sample_config(dataclasses.replace(FAST, **change))


@pytest.mark.parametrize("stats_mode", ["zero", "known"])
def test_given_views_are_seen_clean_by_every_window_with_their_stats(prior, recorder, stats_mode):
    camera = default_input_camera(30.0, 4.0, 64)
    given = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    trajectory = orbit_trajectory(4, 30.0, 4.0, 64, start_azimuth_deg=45.0)
    settings = dataclasses.replace(
        FAST, window_views=2, max_conditions=2, intensity_stats=stats_mode
    )
    model = recorder(prior.model)
    images = generate_views(dataclasses.replace(prior, model=model), ["a box"], trajectory,
                            settings, [0], given, camera, show_progress=False)  # fmt: skip
    assert images.shape == (1, 4, 3, 64, 64)
    stats = intensity_stats(given)[0]
    for call in model.calls:
        assert call["latents"].shape[0] == call["n_views"]  # image guidance 1: one pass
        torch.testing.assert_close(call["w2c"][0], camera.w2c[0])  # the input view, first
        assert call["timesteps"][0] == 0
        pose_stats = call["pose"][:, 8:]
        if stats_mode == "zero":
            assert (pose_stats == 0).all()
        else:
            torch.testing.assert_close(pose_stats[0], stats)  # the input view's own stats
            known = (call["timesteps"] == 0).sum()
            expected = pose_stats[:known].mean(dim=0)  # new views: the mean of the known ones
            torch.testing.assert_close(pose_stats[known:], expected.expand_as(pose_stats[known:]))
    with pytest.raises(ValueError, match="given images need their cameras"):
        generate_views(prior, ["a box"], trajectory, settings, [0], given, None)
