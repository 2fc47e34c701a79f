"""Loading an export: every training mode's weights come back; broken folders are refused."""

import dataclasses
import shutil

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from viewdiff.cameras import intrinsics_from_fov, orbit, pose_features
from viewdiff.config import Config, DataConfig, TrainConfig
from viewdiff.diffusion import noise_scheduler
from viewdiff.inference.load import load_export, read_export
from viewdiff.training.export import export_model
from viewdiff.training.modes import build_training_model

MODEL_SETTINGS = {"pose_lora_rank": 4, "projection_channels": 8, "voxel_grid_size": 8,
                  "render_samples": 8}  # fmt: skip


def predict(model) -> torch.Tensor:
    """The model's prediction for fixed random inputs: 1 object x 2 views."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    K = intrinsics_from_fov(48.0, 64, 64).expand(2, 3, 3)
    w2c = orbit(2, 30.0, 4.0)
    with torch.no_grad():
        return model(latents, torch.tensor([500, 0]), text, K, w2c, pose_features(K, w2c, (64, 64)),
                     n_views=2)  # fmt: skip


@pytest.mark.parametrize("mode", ["full", "lora", "new_layers"])
def test_every_training_mode_loads_back_to_the_same_model(tiny_sd, tmp_path, mode):
    config = Config(
        model=dataclasses.replace(Config().model, pretrained_model=str(tiny_sd), **MODEL_SETTINGS),
        data=DataConfig(image_size=64),
        train=TrainConfig(output_dir=str(tmp_path), mode=mode),
    )
    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    model = build_training_model(unet, config.model, mode, gradient_checkpointing=False).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move what trains away from its start (zero LoRA up-projections)
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    schedule = noise_scheduler(dict(DDPMScheduler.load_config(tiny_sd / "scheduler")), True,
                               "epsilon")  # fmt: skip
    path = export_model(model, config, schedule, step=3)
    prior = load_export(path)
    assert prior.info.step == 3 and prior.info.unet_weights == {"new_layers": "none"}.get(
        mode, mode
    )
    assert prior.info.config == config
    assert prior.scheduler_config["rescale_betas_zero_snr"] is True
    assert not any(p.requires_grad for p in prior.model.parameters())
    torch.testing.assert_close(predict(prior.model), predict(model), rtol=0, atol=1e-5)


def test_incomplete_exports_and_training_checkpoints_are_refused(tiny_export, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_export, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ValueError, match="incomplete export: unet/ is missing"):
        read_export(broken)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    with pytest.raises(ValueError, match="this is a training checkpoint: inference loads"):
        read_export(checkpoint)
    (broken / "base_model.json").write_text('{"step": 1}')
    shutil.copytree(tiny_export / "unet", broken / "unet")
    with pytest.raises(ValueError, match="no 'pretrained_model'"):
        read_export(broken)


def test_an_export_moved_with_its_base_still_finds_it(tiny_sd, tmp_path, monkeypatch):
    # Trained from a base given as a path relative to the working directory (as make demo does).
    run, base = tmp_path / "run", tmp_path / "bases" / "tiny-sd"
    shutil.copytree(tiny_sd, base)
    monkeypatch.chdir(tmp_path)
    config = Config(
        model=dataclasses.replace(
            Config().model, pretrained_model="bases/tiny-sd", **MODEL_SETTINGS
        ),  # fmt: skip
        data=DataConfig(image_size=64),
        train=TrainConfig(output_dir="run", mode="new_layers"),
    )
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    model = build_training_model(unet, config.model, "new_layers", gradient_checkpointing=False)
    schedule = noise_scheduler(dict(DDPMScheduler.load_config(base / "scheduler")), False,
                               "epsilon")  # fmt: skip
    export_model(model, config, schedule, step=1)
    # Both move elsewhere, and inference runs from yet another folder.
    moved = tmp_path / "elsewhere"
    shutil.move(run, moved / "run")
    shutil.move(tmp_path / "bases", moved / "bases")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    info = read_export(moved / "run" / "model")
    assert info.pretrained_model == str(moved / "bases" / "tiny-sd")
    assert load_export(moved / "run" / "model").model is not None
    # Without its base beside it, the export names the base path it was trained from.
    shutil.rmtree(moved / "bases")
    assert read_export(moved / "run" / "model").pretrained_model == "bases/tiny-sd"
    with pytest.raises(ValueError, match="cannot load the base model's unet from 'bases/tiny-sd'"):
        load_export(moved / "run" / "model")
