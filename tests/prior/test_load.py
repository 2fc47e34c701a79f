"""Loading an export: every training mode's weights come back; broken folders are refused."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

import infer
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.config import Config, DataConfig, TrainConfig
from viewdiff.diffusion import noise_scheduler
from viewdiff.prior.load import load_export, read_export
from viewdiff.training.export import export_model
from viewdiff.training.training_model import build_training_model

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


def relative_base_export(tmp_path, monkeypatch, base_dir: str = "bases/tiny-sd"):
    """A new-layers export trained from a base given relative to the working directory (as
    make demo does): ``tmp_path/run/model`` from ``tmp_path/bases/tiny-sd``."""
    monkeypatch.chdir(tmp_path)
    config = Config(
        model=dataclasses.replace(Config().model, pretrained_model=base_dir, **MODEL_SETTINGS),
        data=DataConfig(image_size=64),
        train=TrainConfig(output_dir="run", mode="new_layers"),
    )
    unet = UNet2DConditionModel.from_pretrained(Path(base_dir) / "unet")
    model = build_training_model(unet, config.model, "new_layers", gradient_checkpointing=False)
    schedule = noise_scheduler(dict(DDPMScheduler.load_config(Path(base_dir) / "scheduler")),
                               False, "epsilon")  # fmt: skip
    return export_model(model, config, schedule, step=1).resolve()


def test_an_export_finds_its_base_from_any_working_directory(tiny_sd, tmp_path, monkeypatch):
    base = tmp_path / "bases" / "tiny-sd"
    shutil.copytree(tiny_sd, base)
    export = relative_base_export(tmp_path, monkeypatch)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    # The export alone, elsewhere: its base at the absolute path training read it from.
    alone = tmp_path / "shared" / "model"
    shutil.copytree(export, alone)
    assert read_export(alone).pretrained_model == str(base)
    # Export and base moved together: the base beside it.
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "run", moved / "run")
    shutil.move(tmp_path / "bases", moved / "bases")
    info = read_export(moved / "run" / "model")
    assert info.pretrained_model == str(moved / "bases" / "tiny-sd")
    assert load_export(moved / "run" / "model").model is not None
    # Without its base anywhere: refused before any weight is loaded, unless given one.
    with pytest.raises(ValueError, match="is neither at .* nor at .*; pass its folder with --base"):
        read_export(alone)
    prior = load_export(alone, base=moved / "bases" / "tiny-sd")
    assert prior.info.pretrained_model == str(moved / "bases" / "tiny-sd")


def test_a_base_that_changed_is_refused_and_base_overrides_with_a_warning(
    tiny_sd, tmp_path, monkeypatch
):
    base = tmp_path / "bases" / "tiny-sd"
    shutil.copytree(tiny_sd, base)
    export = relative_base_export(tmp_path, monkeypatch)
    # Another base saved at the same path (here: another VAE config).
    vae_config = base / "vae" / "config.json"
    vae_config.write_text(vae_config.read_text().replace('"sample_size"', '"sample_size" '))
    with pytest.raises(
        ValueError,
        match=r"bases/tiny-sd \(its text_encoder/, tokenizer/.*"
        r"is not the one the export was trained from",
    ):
        read_export(export)
    with pytest.warns(UserWarning, match="is not the one the export was trained from"):
        assert read_export(export, base=base).pretrained_model == str(base)


def test_infer_takes_the_base_from_the_base_flag(tiny_sd, tmp_path, monkeypatch, capsys):
    shutil.copytree(tiny_sd, tmp_path / "bases" / "tiny-sd")
    export = relative_base_export(tmp_path, monkeypatch)
    shutil.move(tmp_path / "bases", tmp_path / "moved")
    argv = ["sample", "--checkpoint", str(export), "--prompt", "a box", "--views", "2",
            "--steps", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    assert exit_info.value.code == 2
    assert "pass its folder with --base DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([*argv, "--base", str(tmp_path / "nothing")])
    assert "argument --base:" in capsys.readouterr().err  # argparse's exit 2, before any load
    assert infer.main([*argv, "--base", str(tmp_path / "moved" / "tiny-sd")]) == 0
    assert len(list((tmp_path / "out" / "views").glob("view_*.png"))) == 2
