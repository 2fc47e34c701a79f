"""bench/ablation.py end to end at smoke size: every variant trains (or not), is measured, and
lands in the json, the markdown table and the chart."""

import json
import math
import runpy
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_quick_ablation_writes_a_row_per_variant(tmp_path):
    ablation = runpy.run_path(str(REPO / "bench/ablation.py"))
    variants = ["base", "cfa", "full"]  # no fine-tune, no projection layers, and the paper's
    ablation["main"](["--quick", "--work", str(tmp_path), "--variants", *variants])
    figures = json.loads((tmp_path / "ablation.json").read_text())
    assert list(figures["variants"]) == variants
    for row in figures["variants"].values():
        assert all(math.isfinite(value) for value in row.values())
    # Its projection layers' zero-initialised output has left zero; cfa has none to report.
    assert figures["variants"]["full"]["projection_output_weight"] > 0
    assert "projection_output_weight" not in figures["variants"]["cfa"]
    table = (tmp_path / "ablation.md").read_text()
    assert all(f"`{name}`" in table for name in variants)
    assert Image.open(tmp_path / "ablation.png").size[0] > 500
    # The full variant trained with the prior set and its last view held out.
    config = json.loads((tmp_path / "runs/full/config.json").read_text())
    assert config["train"]["prior_shards"] and config["train"]["novel_views"] == 1
