"""The benchmarks run (their figures are printed, not tested)."""

import runpy
import sys

import pytest


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


def test_toy_quality_benchmark_measures_every_figure_quickly(tmp_path, capsys):
    figures = runpy.run_path("bench/toy_quality.py")["main"](["--quick", "--work", str(tmp_path)])
    for key in ("vae_psnr", "consistency_joint_psnr", "consistency_single_psnr"):
        assert 0 < figures[key] < 100, key
    assert 0 <= figures["t2i_base"]["colour"] <= 1 and "psnr" in figures["novel_views"]
    assert "VAE held-out PSNR" in capsys.readouterr().out
    assert (tmp_path / "quality.json").is_file() and (tmp_path / "consistency.png").is_file()
