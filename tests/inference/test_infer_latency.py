"""The inference latency benchmark runs and prints its figures (which are not tested)."""

import runpy
import sys

import pytest
import torch


def test_latency_benchmark_prints_a_line_per_batch_kind(capsys, monkeypatch):
    argv = ["infer_latency.py", "--sizes", "tiny", "--views", "3", "--given", "1", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("bench/infer_latency.py", run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert "text   3 views (0 given, 3 new, guidance 7.5)" in lines[0]
    assert "window 3 views (1 given, 2 new, guidance 1.0)" in lines[1]
    assert all("s/batch" in line for line in lines)


def test_full_size_latency_needs_cuda(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["infer_latency.py", "--full"])
    with pytest.raises(SystemExit):
        runpy.run_path("bench/infer_latency.py", run_name="__main__")
    assert "needs CUDA" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_size_latency_path_runs_on_cuda(monkeypatch, capsys):
    argv = ["infer_latency.py", "--full", "--views", "3", "--given", "1", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("bench/infer_latency.py", run_name="__main__")
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
