"""Shipping a base and its export: fp16 safetensors, a base found beside it, a size budget."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open

from viewdiff.config import Config, DataConfig, TrainConfig, load_config
from viewdiff.diffusion import noise_scheduler
from viewdiff.model import MultiViewUNet
from viewdiff.prior.load import load_export, read_export
from viewdiff.toy import ship
from viewdiff.toy.ship import TOY_SDS_PRESET, ship_toy
from viewdiff.training.export import export_model

MODEL = {"pose_lora_rank": 4, "projection_channels": 8, "voxel_grid_size": 8,
         "render_samples": 8}  # fmt: skip


@pytest.fixture(scope="module")
def run(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny base folder and a full-mode export trained from it (added weights perturbed)."""
    out = tmp_path_factory.mktemp("run")
    base = out / "base" / "sd"
    shutil.copytree(tiny_sd, base)
    config = Config(
        model=dataclasses.replace(Config().model, pretrained_model=str(base), **MODEL),
        data=DataConfig(image_size=64),
        train=TrainConfig(output_dir=str(out / "multiview")),
    )
    model = MultiViewUNet(UNet2DConditionModel.from_pretrained(base / "unet"), config.model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=torch.Generator()))
    schedule = noise_scheduler(dict(DDPMScheduler.load_config(base / "scheduler")), False,
                               "epsilon")  # fmt: skip
    return base, export_model(model, config, schedule, step=2)


def dtypes(path: Path) -> set[str]:
    with safe_open(path, framework="pt") as f:
        return {str(f.get_slice(key).get_dtype()) for key in f.keys()}  # noqa: SIM118


def test_shipped_world_is_fp16_finds_its_base_and_predicts_as_before(run, tmp_path):
    base, export = run
    out = tmp_path / "assets" / "toy"
    size = ship_toy(base, export, out, {"made_by": "a test"})
    assert 0 < size < 20
    assert dtypes(out / "sd" / "unet" / "diffusion_pytorch_model.safetensors") == {"F16"}
    assert dtypes(out / "multiview" / "multiview.safetensors") == {"F16"}
    assert dtypes(out / "sd" / "text_encoder" / "model.safetensors") == {"F32"}
    base_model = json.loads((out / "multiview" / "base_model.json").read_text())
    assert base_model["pretrained_model_from_export"] == "../sd"
    assert "pretrained_model_path" not in base_model  # no path of the shipping machine
    assert json.loads((out / "provenance.json").read_text()) == {"made_by": "a test"}
    shipped, original = load_export(out / "multiview"), load_export(export)
    assert Path(shipped.info.pretrained_model).resolve() == (out / "sd").resolve()
    assert next(shipped.model.parameters()).dtype == torch.float32
    for name, value in original.model.state_dict().items():
        torch.testing.assert_close(shipped.model.state_dict()[name], value, rtol=2e-3, atol=1e-4)
    # Shipping again replaces what is there.
    assert ship_toy(base, export, out, {}) == pytest.approx(size, rel=1e-3)
    assert not out.with_name("toy.tmp").exists() and not out.with_name("toy.old").exists()


def test_shipping_refuses_wrong_folders_and_an_oversized_world(run, tmp_path, monkeypatch):
    base, export = run
    with pytest.raises(ValueError, match="not a Stable Diffusion folder"):
        ship_toy(export, export, tmp_path / "toy", {})
    with pytest.raises(ValueError, match="not a training export"):
        ship_toy(base, base, tmp_path / "toy", {})
    other = tmp_path / "other-sd"  # a base the export was not trained from
    shutil.copytree(base, other)
    (other / "vae" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not the base the export was trained from"):
        ship_toy(other, export, tmp_path / "toy", {})
    monkeypatch.setattr(ship, "BUDGET_MB", 0.1)
    with pytest.raises(ValueError, match="over its 0 MB budget"):
        ship_toy(base, export, tmp_path / "toy", {})
    assert not (tmp_path / "toy").exists() and not (tmp_path / "toy.tmp").exists()


def test_the_shipped_export_carries_its_sds_settings_and_sds_starts_from_them(tmp_path):
    from viewdiff.commands.infer import build_parser
    from viewdiff.commands.sds import export_sds_settings, sds_settings
    from viewdiff.toy.assets import TOY_ASSETS

    out = tmp_path / "toy"
    sds = load_config(TOY_SDS_PRESET).sds
    ship_toy(TOY_ASSETS / "sd", TOY_ASSETS / "multiview", out, {}, sds)
    carried = export_sds_settings(read_export(out / "multiview"))
    assert carried == sds and carried.steps == 500  # configs/sds_tiny.yaml's

    def settings(*argv: str):
        args = build_parser().parse_args(["sds", "--checkpoint", str(out / "multiview"),
                                          "--prompt", "a red ball", "--out", str(tmp_path / "o"),
                                          *argv])  # fmt: skip
        return sds_settings(args, export_sds_settings(read_export(args.checkpoint)))

    assert settings() == sds  # what the export carries, with no preset named
    assert settings("sds.steps=7").steps == 7 and settings("--steps", "9").steps == 9
    preset = settings("--config", str(TOY_SDS_PRESET.parent / "sds_sd21.yaml"))
    assert preset == load_config(TOY_SDS_PRESET.parent / "sds_sd21.yaml").sds  # a preset instead
    # An export saved without SDS settings (the one shipped before them): the defaults.
    assert export_sds_settings(read_export(TOY_ASSETS / "multiview")) is None
