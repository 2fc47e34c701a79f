"""The SDS loop on the tiny pipeline: cameras, determinism, exact resume, image conditions."""

import dataclasses

import pytest
import torch

from viewdiff.cameras.conventions import camera_centers
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.prior.camera_record import CameraRecord, write_camera_distribution
from viewdiff.sds.cameras import CameraRanges, camera_ranges, sample_camera_groups
from viewdiff.sds.config import SDS_FIT, SdsConfig
from viewdiff.sds.guidance_eval import guidance_eval_picture
from viewdiff.sds.loop import ImageCondition, ScoreDistillation, initial_scene

RANGES = CameraRanges((3.5, 4.5), (20.0, 40.0), (30.0, 50.0), "test")
CONFIG = SdsConfig(steps=6, num_gaussians=300, image_size=32, views=3, guidance_scale=20.0,
                   fit=dataclasses.replace(SDS_FIT, densify_from=2, densify_interval=2,
                                           densify_grad_threshold=1e-9, max_gaussians=400),
                   checkpoint_every=0, eval_every=0)  # fmt: skip


def test_camera_groups_surround_the_object():
    K, w2c = sample_camera_groups(RANGES, 3, 4, 32, torch.Generator().manual_seed(0))
    assert K.shape == (3, 4, 3, 3) and w2c.shape == (3, 4, 4, 4)
    centres = camera_centers(w2c)  # (3, 4, 3)
    radius = centres.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin(centres[..., 2] / radius))
    for b in range(3):  # one radius and elevation per group, in range
        assert torch.allclose(radius[b], radius[b, 0].expand(4), atol=1e-4)
        assert 3.5 <= radius[b, 0] <= 4.5 and 20 <= elevation[b, 0] <= 40
        azimuth = torch.rad2deg(torch.atan2(centres[b, :, 1], centres[b, :, 0]))
        steps = (azimuth.diff() % 360).tolist()
        assert steps == pytest.approx([90.0] * 3, abs=1e-3)
    assert not torch.allclose(radius[0, 0], radius[1, 0])


def test_camera_ranges_come_from_the_export(tiny_export, tmp_path):
    config = SdsConfig()
    import shutil

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    with pytest.warns(UserWarning, match="falls back|fall back"):
        ranges = camera_ranges(export, _sample(), config)
    assert ranges.radius == (4.0, 4.0) and ranges.elevation_deg == (30.0, 60.0)
    record = CameraRecord()
    w2c = torch.cat([orbit(8, 20.0, 3.0), orbit(8, 30.0, 5.0)])
    record.add(intrinsics_from_fov(40.0, 64, 64).expand(16, 3, 3), w2c, 64)
    write_camera_distribution(export, record)
    ranges = camera_ranges(export, _sample(), config)
    assert 3.0 - 1e-5 <= ranges.radius[0] < ranges.radius[1] <= 5.0 + 1e-5
    assert 20.0 - 1e-3 <= ranges.elevation_deg[0] < ranges.elevation_deg[1] <= 30.0 + 1e-3
    assert ranges.fov_deg == pytest.approx((40.0, 40.0))
    assert ranges.half_width is not None and "training cameras (16 views)" in ranges.source
    chosen = camera_ranges(export, _sample(), SdsConfig(radius=(2.0, 2.5)))
    assert chosen.radius == (2.0, 2.5) and "sds.radius" in chosen.source


def _sample():
    from viewdiff.config import SampleConfig

    return SampleConfig()


def _run(prior, config=CONFIG, image=None):
    return ScoreDistillation(prior, config, "a red ball", initial_scene(config), RANGES, image)


def _scene_bytes(run):
    return b"".join(t.detach().numpy().tobytes() for t in run.fitter.scene.tensors().values())


def test_steps_share_t_per_group_and_repeat_with_the_seed(prior):
    config = dataclasses.replace(CONFIG, batch_size=2)
    run = _run(prior, config)
    reports = [run.step() for _ in range(4)]
    for report in reports:
        assert len(report.timesteps) == 2
        assert report.distillation.timesteps.tolist() == [
            t for t in report.timesteps for _ in range(3)
        ]
        assert all(20 <= t <= 980 for t in report.timesteps)
    assert run.fitter.params["means"].shape[0] > 300  # density control ran on SDS gradients
    again = _run(prior, config)
    for _ in range(4):
        again.step()
    assert _scene_bytes(again) == _scene_bytes(run)
    other = _run(prior, dataclasses.replace(config, seed=1))
    other.step()
    assert _scene_bytes(other) != _scene_bytes(run)


def test_resume_continues_bit_for_bit(prior, tmp_path):
    config = dataclasses.replace(CONFIG, learn_background=True)
    straight = _run(prior, config)
    for _ in range(6):
        straight.step()
    first = _run(prior, config)
    for _ in range(3):
        first.step()
    first.save(tmp_path / "checkpoint")
    first.save(tmp_path / "checkpoint")  # replacing a checkpoint keeps one complete folder
    resumed = _run(prior, config)
    resumed.load(tmp_path / "checkpoint")
    assert resumed.step_count == 3
    for _ in range(3):
        resumed.step()
    assert _scene_bytes(resumed) == _scene_bytes(straight)
    assert torch.equal(resumed.background(), straight.background())
    with pytest.raises(ValueError, match="not of 'a blue box'"):
        ScoreDistillation(prior, config, "a blue box", initial_scene(config), RANGES).load(
            tmp_path / "checkpoint"
        )


def test_image_condition_is_view_zero_at_t0(prior, recorder):
    image = ImageCondition(
        torch.rand(3, 32, 32), intrinsics_from_fov(40, 32, 32), orbit(1, 30, 4)[0]
    )
    run = _run(prior, image=image)
    run.prior = dataclasses.replace(prior, model=recorder(prior.model))
    report = run.step()
    call = run.prior.model.calls[0]
    assert call["timesteps"].tolist()[:3] == [0, report.timesteps[0], report.timesteps[0]]
    assert torch.equal(call["K"][0], image.K) and torch.equal(call["w2c"][0], image.w2c)
    assert torch.count_nonzero(report.distillation.grad[0]) == 0
    assert report.image_loss > 0
    picture = guidance_eval_picture(run, report)
    assert picture.size == (3 * 32, 4 * 32)  # N views x (render, z_t, x0, denoised)


def test_image_space_target_moves_the_scene(prior):
    config = dataclasses.replace(CONFIG, target_space="image")
    run = _run(prior, config)
    before = _scene_bytes(run)
    report = run.step()
    assert report.loss > 0 and _scene_bytes(run) != before
    assert set(run.timer.seconds) == {"render", "encode", "prior", "decode", "backward"}
