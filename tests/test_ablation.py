"""bench/ablation.py end to end at smoke size: every variant trains (or not), is measured, and
lands in the json, the markdown table and the chart; killed twice, a run resumes to the same
figures."""

import json
import math
import runpy
from pathlib import Path

import pytest
from PIL import Image

from tests.commands.kill_runs import finish, kill_when, start

REPO = Path(__file__).resolve().parents[1]


VARIANTS = ["base", "cfa", "full"]  # no fine-tune, no projection layers, and the paper's


@pytest.fixture(scope="module")
def quick_ablation(tmp_path_factory) -> Path:
    """The work folder of an uninterrupted smoke run of three variants."""
    work = tmp_path_factory.mktemp("ablation")
    runpy.run_path(str(REPO / "bench/ablation.py"))["main"](
        ["--quick", "--work", str(work), "--variants", *VARIANTS]
    )
    return work


def test_quick_ablation_writes_a_row_per_variant(quick_ablation):
    tmp_path, variants = quick_ablation, VARIANTS
    figures = json.loads((tmp_path / "ablation.json").read_text())
    assert list(figures["variants"]) == variants
    for row in figures["variants"].values():
        assert all(math.isfinite(value) for value in row.values())
    # Its projection layers' zero-initialised output has left zero; cfa has none to report.
    assert figures["variants"]["full"]["projection_output_weight"] > 0
    assert "projection_output_weight" not in figures["variants"]["cfa"]
    # How much each variant reads the other views; base, one view at a time, reads none.
    assert {"reliance_gain", "reliance_gain_se"} <= set(figures["variants"]["full"])
    assert "reliance_gain" not in figures["variants"]["base"]
    assert "projection_camera" in figures["variants"]["full"]  # its projection layers, read
    assert "projection_camera" not in figures["variants"]["cfa"]  # it has none
    table = (tmp_path / "ablation.md").read_text()
    assert all(f"`{name}`" in table for name in variants)
    assert Image.open(tmp_path / "ablation.png").size[0] > 500
    # The full variant trained with the prior set and its last view held out.
    config = json.loads((tmp_path / "runs/full/config.json").read_text())
    assert config["train"]["prior_shards"] and config["train"]["novel_views"] == 1


def test_an_ablation_killed_in_training_and_in_measuring_resumes_to_the_same_figures(
    quick_ablation, tmp_path
):
    def ablation(work: Path):
        return start("--quick", "--variants", "base", "cfa", "--work", str(work),
                     script=REPO / "bench" / "ablation.py")  # fmt: skip

    work = tmp_path / "killed"
    checkpoints, pictures = work / "runs/cfa/checkpoints", work / "eval/cfa/compare"
    kill_when(ablation(work), lambda: any(checkpoints.glob("checkpoint-*")), "cfa's checkpoint")
    assert not (work / "runs/cfa/model").exists()  # killed inside cfa's training
    kill_when(ablation(work), lambda: any(pictures.glob("*.png")), "cfa's first measure")
    assert list(json.loads((work / "ablation.json").read_text())["variants"]) == ["base"]
    finish(ablation(work))
    whole, killed = (json.loads((folder / "ablation.json").read_text())["variants"]
                     for folder in (quick_ablation, work))  # fmt: skip
    assert killed == {name: whole[name] for name in ("base", "cfa")}


def test_the_sided_world_adds_its_columns_and_the_residual_variant(tmp_path):
    ablation = runpy.run_path(str(REPO / "bench/ablation.py"))
    toy_sd = REPO / "viewdiff/assets/toy/sd"  # any toy SD runs it; make toy-sided makes the real
    argv = ["--quick", "--work", str(tmp_path), "--world", "toy_sided", "--base", str(toy_sd),
            "--variants", "full_residual"]  # fmt: skip
    row = ablation["main"](argv)["variants"]["full_residual"]
    assert {"backdrop_psnr", "mark_one_place", "consistency_psnr_se"} <= set(row)
    table = (tmp_path / "ablation.md").read_text()
    assert "darker side in one place" in table and " ± " in table and "toy_sided world" in table
    config = json.loads((tmp_path / "runs/full_residual/config.json").read_text())
    assert config["model"]["projection_merge"] == "residual"
    assert config["data"]["crop"] == "random_square"  # the sided world's config
    with pytest.raises(SystemExit):  # a work folder of the other world is refused
        ablation["main"](["--quick", "--work", str(tmp_path), "--variants", "base"])
