"""Pretraining the toy SD: resumable seeded stages, a standard diffusers folder, clear errors."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from viewdiff.commands.toy import main
from viewdiff.toy.stage import Stage, learning_rate, run_stage
from viewdiff.toy.vae_training import random_crops
from viewdiff.weights_files import DamagedFile


def linear_stage(steps: int, crash_at: int | None = None) -> Stage:
    """A tiny stage: a linear model fitted to noise drawn from each step's generator."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)

    def loss(step: int, generator: torch.Generator) -> torch.Tensor:
        if step == crash_at:
            raise KeyboardInterrupt("killed")
        x = torch.randn(8, 4, generator=generator)
        return (model(x) - x[:, :2].sin()).square().mean()

    return Stage("linear", {"model": model}, loss, lambda writer, step: {}, steps, 0.1,
                 warmup_steps=2, checkpoint_every=2, evaluate_every=100, log_every=1)  # fmt: skip


def test_a_stage_resumed_after_a_crash_ends_where_an_uninterrupted_one_does(tmp_path: Path):
    whole = linear_stage(7)
    run_stage(whole, tmp_path / "whole")
    interrupted = linear_stage(7, crash_at=5)
    with pytest.raises(KeyboardInterrupt):
        run_stage(interrupted, tmp_path / "resumed")
    state = json.loads((tmp_path / "resumed/linear/checkpoint/state.json").read_text())
    assert state["step"] == 4  # the last checkpoint before the crash
    resumed = linear_stage(7)
    run_stage(resumed, tmp_path / "resumed")
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(whole.parameters()[0], linear_stage(7).parameters()[0])  # it trained


@pytest.mark.parametrize("name", ["optimizer.pt", "weights.safetensors", "state.json"])
def test_a_damaged_stage_checkpoint_is_named_not_a_traceback(tmp_path: Path, name: str):
    run_stage(linear_stage(4), tmp_path)
    path = tmp_path / "linear" / "checkpoint" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    with pytest.raises(DamagedFile, match=f"damaged checkpoint: {name}"):  # exit 2: a ValueError
        run_stage(linear_stage(6), tmp_path)


def test_learning_rate_warms_up_then_decays_to_its_floor():
    stage = linear_stage(102)
    stage.warmup_steps, stage.min_lr_ratio = 2, 0.1
    assert learning_rate(stage, 0) == pytest.approx(0.05)
    assert learning_rate(stage, 1) == pytest.approx(0.1)
    assert learning_rate(stage, 52) == pytest.approx(0.055)
    assert learning_rate(stage, 102) == pytest.approx(0.01)


def test_crops_lie_on_the_latent_grid_and_half_are_flipped():
    image = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    crops = random_crops(image.repeat(64, 1, 1, 1), 8, torch.Generator().manual_seed(0))
    candidates = [image[0, :, r : r + 8, c : c + 8] for r in (0, 8) for c in (0, 8)]
    flipped = 0
    for crop in crops:
        plain = any(torch.equal(crop, c) for c in candidates)
        mirrored = any(torch.equal(crop, c.flip(-1)) for c in candidates)
        assert plain or mirrored
        flipped += mirrored
    assert 16 < flipped < 48
    assert torch.equal(random_crops(image, 16, torch.Generator()).sum(), image.sum())


def test_pretrain_writes_a_loadable_stable_diffusion_folder_and_resumes(
    tmp_path: Path, toy_fit_shards: Path, toy_heldout_shards: Path, capsys
):
    argv = ["pretrain", "--shards", str(toy_fit_shards), "--heldout", str(toy_heldout_shards),
            "--out", str(tmp_path / "run"), "--vae-steps", "3", "--unet-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    folder = tmp_path / "run" / "sd"
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    report = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    # SD's latent scaling is 1 / std of the training latents (not the default 0.18215).
    assert pipe.vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    assert pipe.vae.config.scaling_factor != 0.18215
    assert pipe.unet.config.block_out_channels == [32, 64, 96, 96]
    assert set(report["unet"]) == {"colour_accuracy", "shape_accuracy"}
    assert "blue</w>" in pipe.tokenizer.get_vocab() and "cyan</w>" in pipe.tokenizer.get_vocab()
    image = pipe("a red ball", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 64, 64)
    weights = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    # A rerun finds both stages complete and writes the same pipeline again.
    assert main(argv) == 0
    again = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert "toy Stable Diffusion" in capsys.readouterr().out


def test_pretrain_refuses_folders_that_are_not_shards(tmp_path: Path, toy_fit_shards: Path):
    argv = ["pretrain", "--shards", str(tmp_path), "--heldout", str(toy_fit_shards),
            "--out", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()
