"""A self-contained folder: an export with its base inside, copied and loaded from anywhere."""

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.commands.self_contained import main
from viewdiff.config import Config, DataConfig, TrainConfig
from viewdiff.diffusion import noise_scheduler
from viewdiff.editing.editing_model import check_editing_model
from viewdiff.model.persistence import DIFFUSERS_LORA_FILE
from viewdiff.prior.load import load_export
from viewdiff.prior.self_contained import write_self_contained
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


def trained_export(base, out, mode: str):
    """An export of ``mode`` from ``base``, what trains moved away from its start."""
    config = Config(
        model=dataclasses.replace(Config().model, pretrained_model=str(base), **MODEL_SETTINGS),
        data=DataConfig(image_size=64),
        train=TrainConfig(output_dir=str(out), mode=mode),
    )
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    model = build_training_model(unet, config.model, mode, gradient_checkpointing=False).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    schedule = noise_scheduler(dict(DDPMScheduler.load_config(base / "scheduler")), True,
                               "epsilon")  # fmt: skip
    return export_model(model, config, schedule, step=3)


@pytest.mark.parametrize("mode", ["full", "lora", "new_layers"])
def test_a_self_contained_folder_loads_the_same_model_without_its_base(
    tiny_sd, tmp_path, monkeypatch, mode
):
    base = tmp_path / "base"
    shutil.copytree(tiny_sd, base)
    export = trained_export(base, tmp_path / "run", mode)
    folder = write_self_contained(export, tmp_path / "made" / "prior")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "MultiViewPipeline"
    assert index["unet"] == ["viewdiff.model.multiview_unet", "MultiViewUNet"]
    for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        assert (folder / part).is_dir()
    assert (folder / DIFFUSERS_LORA_FILE).is_file() == (mode == "lora")
    record = json.loads((folder / "base_model.json").read_text())
    original = json.loads((export / "base_model.json").read_text())
    assert record["pretrained_model_from_export"] == "." and record["self_contained"]
    assert "pretrained_model_path" not in record  # no path of the machine that wrote it
    assert record["pretrained_model_hash"] == original["pretrained_model_hash"]  # the same bytes
    expected = predict(load_export(export).model)
    # The base and the run are gone; the folder is copied elsewhere and read from a third place.
    shutil.rmtree(base)
    shutil.rmtree(tmp_path / "run")
    copied = tmp_path / "copied" / "prior"
    shutil.copytree(folder, copied)
    shutil.rmtree(folder)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    prior = load_export(copied)
    assert prior.info.pretrained_model == str(copied)
    assert prior.info.step == 3 and prior.info.unet_weights == {"new_layers": "none"}.get(
        mode, mode
    )
    torch.testing.assert_close(predict(prior.model), expected, rtol=0, atol=0)
    assert check_editing_model(copied) == "multiview"  # not taken for a plain SD folder
    with pytest.raises(ValueError, match="already exists"):
        write_self_contained(copied, tmp_path / "copied")


def test_the_command_line_writes_the_folder_or_exits_2(tiny_export, tmp_path, capsys):
    assert main(["--export", str(tiny_export), "--out", str(tmp_path / "prior")]) == 0
    assert "and its base ->" in capsys.readouterr().out
    assert (tmp_path / "prior" / "vae").is_dir() and (
        tmp_path / "prior" / "multiview.json"
    ).is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["--export", str(tmp_path / "nothing"), "--out", str(tmp_path / "other")])
    assert exit_info.value.code == 2
    assert "error: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
