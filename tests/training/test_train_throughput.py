"""bench/train_throughput.py runs and prints its figures (they are reported, not tested)."""

import re
import runpy
import sys

import pytest


def run_bench(monkeypatch, capsys, *argv: str) -> list[str]:
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", *argv])
    runpy.run_path("bench/train_throughput.py", run_name="__main__")
    return capsys.readouterr().out.strip().splitlines()


def test_cpu_sizes_print_steps_samples_and_views_per_second(monkeypatch, capsys):
    (line,) = run_bench(monkeypatch, capsys, "--sizes", "tiny", "--views", "2", "--steps", "1")
    figures = r"tiny +64px N=2 B=1 no +full adamw cpu: +[\d.]+ s/step +[\d.]+ samples/s"
    assert re.search(figures, line)
    assert "views/s" in line and "peak" in line


def test_full_path_counts_model_flops_and_utilisation(monkeypatch, capsys):
    # The --full path (FLOPs, MFU) on a CPU with the tiny pipeline; on a GPU it runs SD 2.1 size.
    argv = (
        "--full",
        "--device",
        "cpu",
        "--sizes",
        "tiny",
        "--dtype",
        "no",
        "--batch",
        "1",
        "--views",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--peak-tflops",
        "1",
        "--optimizer",
        "adamw8bit",  # the memory figure's other setting (bitsandbytes runs on CPU)
    )
    (line,) = run_bench(monkeypatch, capsys, *argv)
    assert " full adamw8bit cpu:" in line, line
    flops = re.search(r"([\d.e+-]+) TFLOP/step +([\d.e+-]+) TFLOP/s +MFU ([\d.]+)% of 1", line)
    assert flops and float(flops.group(1)) > 0, line


def test_full_size_needs_cuda(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--full"])
    with pytest.raises(SystemExit):
        runpy.run_path("bench/train_throughput.py", run_name="__main__")
