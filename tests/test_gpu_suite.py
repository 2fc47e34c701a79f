"""bench/gpu_suite.py: the smoke run goes through every part, and a part that fails or hangs is
recorded without stopping the others (the figures themselves are reported, not tested)."""

import argparse
import json
import math
import runpy
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = str(REPO / "bench" / "gpu_suite.py")
# The figures each part must measure (> 0) in the smoke run.
TIMINGS = {
    "model_step": ("s_per_step", "images_per_s", "peak_gib"),
    "model_step_before": ("s_per_step", "images_per_s", "peak_gib"),
    "train": ("s_per_step", "views_per_s", "peak_gib", "tflop_per_step", "mfu"),
    "train_checkpointing": ("s_per_step", "views_per_s", "peak_gib", "tflop_per_step", "mfu"),
    "infer_latency": ("s_per_batch", "s_per_new_view"),
    "sds_step": ("total_ms", "prior_ms", "render_ms"),
    "render_torch": ("forward_ms", "backward_ms", "views_per_s"),
    "inversion": ("invert_s", "edit_s"),
    "train_memory": ("s_per_step", "peak_gib"),
}
CUDA_ONLY = {"render_gsplat"}


def numbers(figure: dict) -> list[float]:
    """The numeric values of one figure (booleans are not numbers here)."""
    return [v for v in figure.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def test_smoke_run_measures_every_part(tmp_path, capsys):
    start = time.perf_counter()
    suite_main = runpy.run_path(SUITE)["main"]
    assert suite_main(["--smoke", "--jobs", "2", "--out", str(tmp_path)]) == 0
    print(f"smoke suite: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    suite = json.loads((tmp_path / "gpu_suite.json").read_text())
    parts, environment = suite["parts"], suite["environment"]
    assert list(parts) == list(runpy.run_path(SUITE)["PARTS"])
    assert environment["torch"] and environment["device"].startswith("CPU")
    assert "git_commit" in environment and environment["date"]
    for name, part in parts.items():
        if name in CUDA_ONLY or (name == "projection" and part["status"] == "skipped"):
            assert part["status"] == "skipped" and part["reason"], (name, part)
            assert "CUDA" in part["reason"] or "not in this checkout" in part["reason"]
            continue
        assert part["status"] == "ok", (name, part.get("stderr_tail"))
        assert part["seconds"] > 0 and part["figures"] and part["stdout"], name
        for figure in part["figures"]:
            values = numbers(figure)
            assert values and all(math.isfinite(v) and v >= 0 for v in values), (name, figure)
            assert any(v > 0 for v in values), (name, figure)
            for key in TIMINGS.get(name, ()):
                assert figure[key] > 0, (name, key, figure)
    markdown = (tmp_path / "gpu_suite.md").read_text()
    assert all(f"## {name}: {part['status']}" in markdown for name, part in parts.items())
    assert "| unet | resolution | variant |" in markdown  # model_step's table
    assert markdown in capsys.readouterr().out


class Parsed(Exception):
    """Raised once a script has parsed its options, before it measures anything."""


@pytest.mark.parametrize("name", list(runpy.run_path(SUITE)["PARTS"]))
def test_every_part_takes_its_gpu_options(name, tmp_path, monkeypatch):
    # The smoke run uses other options; these are the ones a GPU run passes, checked here so
    # that a misspelt or dropped option does not cost the first GPU run.
    part = runpy.run_path(SUITE)["PARTS"][name]
    parse = argparse.ArgumentParser.parse_args
    parsed = []

    def parse_then_stop(self, args=None, namespace=None):
        parsed.append(parse(self, args, namespace))
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    script_main = runpy.run_path(str(REPO / part.script))["main"]
    with pytest.raises(Parsed):
        script_main([*part.gpu, "--json", str(tmp_path / "figures.json")])
    assert parsed and str(parsed[0].json) == str(tmp_path / "figures.json")


def test_a_failed_or_stopped_part_keeps_its_stderr_and_figures(tmp_path):
    suite = runpy.run_path(SUITE)
    part, work = suite["Part"], tmp_path / "work"
    work.mkdir()
    crash = tmp_path / "crash.py"
    crash.write_text('import sys\nprint("measured nothing")\nsys.exit("CUDA out of memory")\n')
    failed = suite["run_part"](part("crashes", str(crash), (), (), 30), True, 30, work)
    assert failed["status"] == "failed" and failed["reason"] == "exit status 1"
    assert "CUDA out of memory" in failed["stderr_tail"][-1]
    hang = tmp_path / "hang.py"
    hang.write_text(
        f"import argparse, sys, time\nsys.path.insert(0, {str(REPO / 'bench')!r})\n"
        "from json_records import JsonRecords, add_json_option\n"
        "parser = argparse.ArgumentParser()\nadd_json_option(parser)\n"
        "records = JsonRecords(parser.parse_args().json)\n"
        'records.add({"s_per_step": 0.5})\nprint("one configuration", flush=True)\n'
        "time.sleep(60)\n"
    )
    start = time.perf_counter()
    stopped = suite["run_part"](part("hangs", str(hang), (), (), 2), True, 2, work)
    assert time.perf_counter() - start < 30
    assert stopped["status"] == "timeout" and stopped["figures"] == [{"s_per_step": 0.5}]
    assert stopped["stdout"] == ["one configuration"]
    record = {"mode": "smoke, CPU", "budget_s": 60.0, "seconds": 3.0,
              "environment": suite["environment"](True),
              "parts": {"crashes": failed, "hangs": stopped}}  # fmt: skip
    markdown = suite["markdown"](record)
    assert "## crashes: failed" in markdown and "CUDA out of memory" in markdown
    assert "## hangs: timeout" in markdown and "| 0.5 |" in markdown


def test_the_full_suite_needs_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SUITE)["main"](["--out", str(tmp_path / "suite")])
    assert exit_info.value.code == 2 and "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "suite").exists()


def test_parts_run_side_by_side_only_in_a_smoke_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(SUITE)["main"](["--jobs", "2", "--out", str(tmp_path / "suite")])
    assert exit_info.value.code == 2 and "--smoke only" in capsys.readouterr().err
