"""The benchmarks run (their figures are printed, not tested)."""

import json
import runpy
import sys

import pytest
from torch.utils.flop_counter import FlopCounterMode


def test_model_step_benchmark_prints_a_line_per_configuration(capsys, monkeypatch):
    argv = ["model_step.py", "--sizes", "tiny", "--resolutions", "64", "--steps", "1", "--small-3d"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("bench/model_step.py", run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    # One line per component setting: stock, +cfa, +pose-lora, +projection, all.
    assert len(lines) == 5, lines


def test_full_size_benchmark_needs_cuda(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["model_step.py", "--full"])
    with pytest.raises(SystemExit):
        runpy.run_path("bench/model_step.py", run_name="__main__")


@pytest.mark.parametrize("world", ["toy", "toy_sided"])
def test_toy_quality_benchmark_measures_every_figure_quickly(world, tmp_path, capsys):
    argv = ["--quick", "--work", str(tmp_path), "--world", world]
    figures = runpy.run_path("bench/toy_quality.py")["main"](argv)
    for key in ("vae_psnr", "consistency_joint_psnr", "consistency_single_psnr"):
        assert 0 < figures[key] < 100, key
    if world == "toy_sided":  # the backdrop and the darker side, measured on real renders too
        one = figures["consistency_real"]["one_object"]
        assert one["backdrop_psnr"] > 30 and one["mark_one_place"] == 1.0, one
        assert 0 <= figures["consistency_joint"]["mark_agreement"] <= 1
    assert 0 <= figures["t2i_base"]["colour"] <= 1 and "psnr" in figures["novel_views"]
    assert all(r["own"] > 0 and abs(r["gain"]) < 30 for r in figures["reliance"].values())
    assert len(figures["projection_activity"]) == 3  # the shipped prior's three layers
    assert "VAE held-out PSNR" in capsys.readouterr().out
    assert (tmp_path / "quality.json").is_file() and (tmp_path / "consistency.png").is_file()


def test_toy_quality_measures_camera_use_alone(tmp_path, capsys):
    argv = ["--quick", "--only", "camera-use", "--work", str(tmp_path), "--world", "toy_sided"]
    figures = runpy.run_path("bench/toy_quality.py")["main"](argv)
    assert set(figures) == {"reliance", "projection_activity", "minutes"}, set(figures)
    assert set(figures["reliance"]) == {"250", "500", "750"}
    assert all("pose_use" in r and "pose_use_se" in r for r in figures["reliance"].values())
    out = capsys.readouterr().out
    assert "pose use" in out and "VAE" not in out
    assert json.loads((tmp_path / "quality.json").read_text())["reliance"] == figures["reliance"]


def test_sds_step_benchmark_splits_the_step(capsys):
    runpy.run_path("bench/sds_step.py")["main"](["--steps", "1", "--gaussians", "200"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("ms/step" in line and "prior" in line for line in lines), lines


def test_sds_full_benchmark_needs_cuda(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit):
        runpy.run_path("bench/sds_step.py")["main"](["--full"])


def test_sds_quality_benchmark_runs_every_check_quickly(tmp_path, capsys):
    main = runpy.run_path("bench/sds_quality.py")["main"]
    assert main(["--quick", "--work", str(tmp_path), "--prompts", "a red ball"]) == 0
    figures = json.loads((tmp_path / "sds_quality.json").read_text())
    (text,) = figures["text_to_3d"]
    assert 0 <= text["colour_right"] <= 1 and len(text["parts"]) == 8
    image = figures["image_to_3d"]
    assert 0 < image["psnr_constant_colour"] < 100 and 0 < image["psnr_other_views"] < 100
    assert (tmp_path / "sds_quality.png").is_file() and "image to 3D" in capsys.readouterr().out


def test_inversion_benchmark_times_both_priors(capsys):
    runpy.run_path("bench/inversion.py")["main"](["--steps", "4", "--skip", "1", "--views", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("invert 4 steps" in line for line in lines), lines


def test_edit_quality_benchmark_measures_every_figure_quickly(tmp_path, capsys):
    assert (
        runpy.run_path("bench/edit_quality.py")["main"](["--quick", "--work", str(tmp_path)]) == 0
    )
    (result,) = json.loads((tmp_path / "edit_quality.json").read_text())["objects"]
    assert result["max_latent_error"] <= 1e-4 and result["caption"] == "a red ball"
    for name in ("joint", "one_by_one"):
        assert 0 <= result[name]["colour_right"] <= 1 and 0 < result[name]["background_psnr"] < 100
    assert (tmp_path / "edit_quality.png").is_file() and "| joint |" in capsys.readouterr().out


def test_trame_quality_benchmark_measures_every_variant_quickly(tmp_path, capsys):
    main = runpy.run_path("bench/trame_quality.py")["main"]
    assert main(["--quick", "--work", str(tmp_path), "--views", "4",
                 "--variants", "full,no_tas,no_vcac"]) == 0  # fmt: skip
    variants = json.loads((tmp_path / "trame_quality.json").read_text())["variants"]
    assert set(variants) == {"full", "no_tas", "no_vcac"}
    for metrics in variants.values():
        assert 0 <= metrics["target_colour"] <= 1 and len(metrics["colours"]) == 24
        assert 0 < metrics["consistency_psnr"] < 100 and 0 < metrics["outside_psnr"] < 100
    assert (tmp_path / "trame_quality.png").is_file() and "| no_tas |" in capsys.readouterr().out


def test_projection_benchmark_restates_the_reference_pieces_faithfully(capsys):
    bench = runpy.run_path("bench/projection.py")
    torch = bench["torch"]
    for background in (False, True):
        torch.manual_seed(0)
        aggregator = bench["IBRNetAggregator"](16, bench["TEMB_DIM"])
        with torch.no_grad():  # the viewing directions are the one input found differently
            aggregator.ray_depth_encoder[0].weight[:, :3] = 0
        reference = bench["ReferencePieces"](aggregator)
        K, w2c = bench["scene"](5, 8, torch.device("cpu"))
        points, usable = bench["grid_world_points"](8, background, torch.float32, "cpu")
        inputs = (torch.randn(1, 5, 16, 8, 8), K, w2c, points, usable, torch.randn(1, 5, 128))
        ours = bench["ours"](aggregator, background)(*inputs)
        torch.testing.assert_close(ours, reference(*inputs), rtol=1e-5, atol=1e-5)
    bench["main"](["--features", "8", "--grids", "8", "--repeats", "1", "--background", "on"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "ratio" in lines[0] and "fwd+bwd" in lines[1], lines


def test_projection_floor_does_the_matrix_products_of_ours():
    # The lower bound must not leave work out: the same matrix-product FLOPs as our unproject +
    # aggregate fwd+bwd, less only the camera projection and the time-embedding encoder.
    bench = runpy.run_path("bench/projection.py")
    torch = bench["torch"]
    for background in (False, True):
        torch.manual_seed(0)
        aggregator = bench["IBRNetAggregator"](16, bench["TEMB_DIM"])
        K, w2c = bench["scene"](5, 8, torch.device("cpu"))
        points, usable = bench["grid_world_points"](8, background, torch.float32, "cpu")
        features = torch.randn(1, 5, 16, 8, 8, requires_grad=True)
        inputs = (features, K, w2c, points, usable, torch.randn(1, 5, 128))
        with FlopCounterMode(display=False) as ours:
            out = bench["ours"](aggregator, background)(*inputs)
            torch.autograd.grad(out.square().mean(), [features, *aggregator.parameters()])
        voxels = int(usable.sum())  # those computed: all of them without background
        floor_run = bench["necessary_ops"](aggregator, 5, voxels, 8, torch.device("cpu"))
        with FlopCounterMode(display=False) as floor:
            assert floor_run() > 0
        ratio = floor.get_total_flops() / ours.get_total_flops()
        assert 0.98 < ratio < 1.0, (background, ratio)


def test_trame_quality_edits_a_ball_written_directly_as_gaussians(tmp_path, capsys):
    main = runpy.run_path("bench/trame_quality.py")["main"]
    argv = ["--quick", "--work", str(tmp_path), "--views", "4", "--variants", "full"]
    assert main([*argv, "--scene", "direct"]) == 0
    assert "(direct scene)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # it writes balls only
        main([*argv, "--scene", "direct", "--shape", "box"])


def test_edit_quality_edits_views_of_a_ball_written_directly_as_gaussians(tmp_path):
    main = runpy.run_path("bench/edit_quality.py")["main"]
    assert main(["--quick", "--work", str(tmp_path), "--views-from", "direct"]) == 0
    (result,) = json.loads((tmp_path / "edit_quality.json").read_text())["objects"]
    assert result["object"] == "direct red ball" and result["target"] == "a blue ball"
    assert 0 <= result["joint"]["colour_right"] <= 1
