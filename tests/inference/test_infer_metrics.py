"""Evaluation metrics: PSNR and SSIM per view, with and without masks, and their summaries."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from viewdiff.inference.evaluate import (
    SSIM_PROTOCOL,
    ObjectResult,
    format_table,
    summarize,
    to_unit_range,
    view_metrics,
    view_psnr,
    view_ssim,
    write_results,
)
from viewdiff.scene.losses import ssim


def images(seed: int, shape=(2, 3, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_psnr_is_the_per_view_mse_in_decibels():
    target = images(0)
    noisy = (target + 0.1 * torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1)).clamp(0, 1)
    mse = (noisy - target).square().flatten(1).mean(1)
    torch.testing.assert_close(view_psnr(noisy, target), -10 * torch.log10(mse))
    assert torch.isinf(view_psnr(target, target)).all()


def test_masked_psnr_sees_only_pixels_inside_the_mask():
    target = images(1)
    wrong_outside = target.clone()
    wrong_outside[..., :8] = 1 - wrong_outside[..., :8]  # left half wrong
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    mask[..., 8:] = 1.0
    assert torch.isinf(view_psnr(wrong_outside, target, mask)).all()  # exact inside
    assert torch.isfinite(view_psnr(wrong_outside, target)).all()
    wrong_outside[0, 0, 4, 12] += 0.5  # one wrong pixel inside: 1 of 3 * 128 values
    expected = -10 * math.log10(0.25 / (3 * 128))
    assert view_psnr(wrong_outside, target, mask)[0].item() == pytest.approx(expected)
    assert torch.isnan(view_psnr(target, target, torch.zeros_like(mask))).all()  # empty mask


def test_ssim_is_one_for_equal_views_lower_for_others_and_masked_inside():
    target = images(2, (2, 3, 32, 32))
    assert torch.allclose(view_ssim(target, target), torch.ones(2, dtype=torch.float64))
    other = images(3, (2, 3, 32, 32))
    assert (view_ssim(other, target) < 0.2).all()
    half = target.clone()
    half[..., :16] = other[..., :16]
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.float64)
    mask[..., 24:] = 1.0  # far from the changed half: SSIM windows there see equal images
    torch.testing.assert_close(view_ssim(half, target, mask), torch.ones(2, dtype=torch.float64))
    assert (view_ssim(half, target) < 0.7).all()


def test_ssim_is_scikit_image_called_as_the_reference_calls_it():
    generator = torch.Generator().manual_seed(0)
    smooth = torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    target = F.interpolate(smooth, size=64, mode="bilinear", align_corners=False)
    noise = torch.randn(target.shape, generator=generator, dtype=torch.float64)
    generated = (target.roll(1, dims=-1) + 0.05 * noise).clamp(0, 1)
    found = view_ssim(generated, target)
    # ViewDiff's viewdiff/metrics/image_metrics.py: one view (C, H, W) at a time.
    for v in range(2):
        reference = structural_similarity(
            generated[v].numpy(), target[v].numpy(), data_range=1, channel_axis=0
        )
        assert found[v].item() == pytest.approx(reference, rel=0, abs=1e-12)
        # Not the 11x11 Gaussian SSIM of the fitting loss, which it replaced here.
        assert abs(ssim(generated[v], target[v]).item() - reference) > 0.01
    # A mask over everything averages the same map over the same pixels.
    everything = torch.ones(2, 1, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(view_ssim(generated, target, everything), found, rtol=0, atol=1e-12)
    empty = view_ssim(generated, target, torch.zeros_like(everything))
    assert torch.isnan(empty).all()


def test_view_metrics_take_images_in_minus_one_one_and_report_every_metric():
    target = images(4) * 2 - 1
    metrics = view_metrics(target * 0.9, target, torch.ones(2, 1, 16, 16))
    assert set(metrics) == {"psnr", "ssim", "psnr_masked", "ssim_masked"}
    assert metrics["psnr"] == pytest.approx(metrics["psnr_masked"])
    unit = to_unit_range(target)
    assert metrics["psnr"] == pytest.approx(view_psnr(to_unit_range(target * 0.9), unit).tolist())
    without = view_metrics(target * 0.9, target, None)
    assert all(math.isnan(v) for v in without["psnr_masked"])


def test_summaries_average_objects_and_skip_non_finite_views(tmp_path, capsys):
    def result(key, psnr):
        views = {"psnr": psnr, "ssim": [0.5, 0.7], "psnr_masked": psnr, "ssim_masked": [1.0, 1.0]}
        return ObjectResult(key, "box", "seq", "a box", [0], [1, 2], views)

    results = [result("a", [10.0, 20.0]), result("b", [30.0, math.inf])]
    assert summarize(results)["psnr"] == pytest.approx((15.0 + 30.0) / 2)
    assert summarize(results)["ssim"] == pytest.approx(0.6)
    write_results(tmp_path / "eval.json", results, {"known": 1})
    document = json.loads((tmp_path / "eval.json").read_text())
    assert document["objects"][1]["views"]["psnr"] == [30.0, None]
    assert document["mean"]["psnr"] == pytest.approx(22.5)
    assert document["ssim_protocol"] == SSIM_PROTOCOL and "scikit-image" in SSIM_PROTOCOL
    table = format_table(results).splitlines()
    assert len(table) == 7 and "mean of 2 objects" in table[-2] and "22.5000" in table[-2]
    assert table[-1] == f"SSIM: {SSIM_PROTOCOL}"
