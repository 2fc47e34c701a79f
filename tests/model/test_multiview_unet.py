"""The multi-view UNet on tiny SD 2.1-shaped UNets: behaviour, gradients, save/load, benchmark."""

import copy
import dataclasses
import json
import logging
import runpy
import sys

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.cameras.pose_features import pose_features
from viewdiff.config import (
    Config,
    ConfigError,
    ModelConfig,
    config_to_dict,
    load_config,
    read_config_json,
)
from viewdiff.model import MultiViewUNet, add_base_lora, load_multiview_unet, save_multiview_unet
from viewdiff.model.volume_render import sample_depths
from viewdiff.tiny import build_unet, unet_config

CONFIG = ModelConfig(
    pretrained_model="tiny",
    pose_lora_rank=4,
    projection_channels=8,
    voxel_grid_size=8,
    render_samples=8,
    density_noise=0.0,  # the models run in training mode; these tests compare calls exactly
)


def inputs(objects: int = 2, n_views: int = 3, seed: int = 0) -> dict:
    """Random latents/text/timesteps and orbit cameras for objects x views, 64 px images."""
    generator = torch.Generator().manual_seed(seed)
    rows = objects * n_views
    w2c = orbit(n_views, elevation_deg=20.0, radius=3.0).repeat(objects, 1, 1)
    K = intrinsics_from_fov(50.0, 64, 64).expand(rows, 3, 3)
    return dict(
        latents=torch.randn(rows, 4, 8, 8, generator=generator),
        timesteps=torch.randint(0, 1000, (rows,), generator=generator),
        encoder_hidden_states=torch.randn(rows, 77, 32, generator=generator),
        K=K,
        w2c=w2c,
        pose_features=pose_features(K, w2c, (64, 64)),
        n_views=n_views,
    )


def activate(model: MultiViewUNet) -> None:
    """Perturb the zero-initialised weights (LoRA up-projections, projection outputs)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("unet.") and p.abs().amax() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
        for layer in model.projection_layers.values():
            layer.renderer.density.bias.fill_(0.0)  # a visible grid, not an almost empty one


@pytest.fixture(scope="module")
def base_unet() -> UNet2DConditionModel:
    return build_unet(unet_config("tiny"), seed=0)


@pytest.fixture(scope="module")
def active_model(base_unet) -> MultiViewUNet:
    model = MultiViewUNet(copy.deepcopy(base_unet), CONFIG)
    activate(model)
    return model


def test_one_view_at_initialisation_is_the_base_unet_with_residual_projection(tiny_sd):
    # The paper's projection layers replace features from the start (test_projection_merge).
    residual = ModelConfig(**{**CONFIG.__dict__, "projection_merge": "residual",
                              "projection_in": "single", "projection_out": "zero"})  # fmt: skip
    base = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    model = MultiViewUNet(UNet2DConditionModel.from_pretrained(tiny_sd / "unet"), residual)
    assert len(model.projection_layers) == 4 and len(model.attention_layers) == 20
    batch = inputs(objects=3, n_views=1)
    with torch.no_grad():
        out = model(**batch)
        expected = base(batch["latents"], batch["timesteps"], batch["encoder_hidden_states"]).sample
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_views_are_permutation_equivariant_and_objects_independent(active_model):
    batch = inputs()
    with torch.no_grad():
        out = active_model(**batch)
        order = torch.tensor([1, 2, 0, 5, 3, 4])  # permute the views of each object
        permuted = {k: v[order] if torch.is_tensor(v) else v for k, v in batch.items()}
        torch.testing.assert_close(active_model(**permuted), out[order], rtol=1e-5, atol=1e-5)
        # Another second object leaves the first untouched; changing one view changes the others.
        changed = dict(batch, latents=batch["latents"].clone())
        changed["latents"][5] = torch.randn(4, 8, 8)
        out_changed = active_model(**changed)
    torch.testing.assert_close(out_changed[:3], out[:3], rtol=0, atol=1e-6)
    assert (out_changed[3:5] - out[3:5]).abs().amax() > 1e-4


def test_every_added_parameter_receives_a_gradient(base_unet):
    model = MultiViewUNet(copy.deepcopy(base_unet), CONFIG)
    activate(model)
    model(**inputs(objects=1)).square().mean().backward()
    without = [
        name
        for name, p in model.named_parameters()
        if not name.startswith("unet.") and (p.grad is None or p.grad.abs().amax() == 0)
    ]
    assert not without, f"added parameters without gradient: {without}"


def test_the_condition_survives_gradient_checkpointing(active_model):
    checkpointed = copy.deepcopy(active_model)
    checkpointed.unet.enable_gradient_checkpointing()  # recomputes the transformer blocks
    batch = inputs(objects=1)
    for model in (active_model, checkpointed):
        model.zero_grad()
        model.train()(**batch).square().mean().backward()
    for (name, a), b in zip(
        active_model.named_parameters(), checkpointed.parameters(), strict=True
    ):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_compiled_projection_layers_compute_the_same_step(active_model):
    # aot_eager traces the layers as inductor does (dynamo + AOTAutograd) without generating
    # C++: seconds instead of the minutes the CPU compiler needs (bench/projection.py --compile)
    compiled = copy.deepcopy(active_model)
    compiled.compile_projection_layers(backend="aot_eager")
    assert compiled.state_dict().keys() == active_model.state_dict().keys()
    batch = inputs(objects=1)
    outputs = []
    for model in (active_model, compiled):
        model.zero_grad()
        out = model.train()(**batch)
        out.square().mean().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(active_model.named_parameters(), compiled.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_no_warning_reaches_the_log(base_unet, caplog):
    model = MultiViewUNet(copy.deepcopy(base_unet), CONFIG)
    logger = logging.getLogger("diffusers")
    logger.addHandler(caplog.handler)  # diffusers' loggers do not propagate to the root
    try:
        with caplog.at_level(logging.INFO, logger="diffusers"), torch.no_grad():
            model(**inputs(objects=1))
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_parameter_groups_split_every_parameter_once(active_model):
    groups = active_model.parameter_groups()
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(active_model.parameters()))
    renderer_ids = {id(p) for p in groups["renderer"]}
    for name, p in active_model.named_parameters():
        # The renderers' own fields; their ray encoders train with the UNet, as the reference's.
        in_renderer = ".renderer." in name and ".ray_encoder." not in name
        assert (id(p) in renderer_ids) == in_renderer, name
    assert {k.split(".")[0] for k in active_model.added_state_dict()} == {
        "attention_layers",
        "projection_layers",
    }


def test_full_save_load_round_trips(active_model, tmp_path):
    save_multiview_unet(active_model, tmp_path / "export", unet_weights="full")
    runtime = ModelConfig(**{**CONFIG.__dict__, "projection_checkpointing": True})
    loaded = load_multiview_unet(tmp_path / "export", expected_config=runtime)
    assert loaded.config == runtime  # how it runs comes from the caller, what it is from the file
    loaded_state = loaded.state_dict()
    for key, value in active_model.state_dict().items():
        assert torch.equal(loaded_state[key], value), key
    batch = inputs(objects=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), active_model(**batch), rtol=0, atol=0)


def test_peft_adapter_save_load_round_trips(base_unet, tmp_path):
    model = MultiViewUNet(copy.deepcopy(base_unet), CONFIG)
    add_base_lora(model.unet, rank=4)
    activate(model)
    with torch.no_grad():
        for module in model.unet.modules():
            if isinstance(module, LoraLayer):
                torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    save_multiview_unet(model, tmp_path / "export", unet_weights="lora")
    assert (tmp_path / "export/unet_lora/adapter_config.json").is_file()
    assert not (tmp_path / "export/unet").exists()
    loaded = load_multiview_unet(tmp_path / "export", base_unet=copy.deepcopy(base_unet))
    batch = inputs(objects=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), model(**batch), rtol=0, atol=0)
        plain = MultiViewUNet(copy.deepcopy(base_unet), CONFIG)
        plain.load_state_dict(model.added_state_dict(), strict=False)
        assert (plain(**batch) - model(**batch)).abs().amax() > 1e-4  # the adapter matters


def test_mismatched_loads_fail_naming_what_differs(active_model, base_unet, tmp_path):
    export = tmp_path / "export"
    save_multiview_unet(active_model, export, unet_weights="none")
    other = ModelConfig(**{**CONFIG.__dict__, "voxel_grid_size": 16})
    with pytest.raises(ConfigError, match=r"model.voxel_grid_size: saved 8, expected 16"):
        load_multiview_unet(export, base_unet=copy.deepcopy(base_unet), expected_config=other)
    with pytest.raises(ValueError, match="pass the base UNet it was trained from, 'tiny'"):
        load_multiview_unet(export)
    with pytest.raises(ValueError, match="block_out_channels: saved"):
        load_multiview_unet(export, base_unet=build_unet(unet_config("mid")))
    weights = load_file(export / "multiview.safetensors")
    key = next(k for k in weights if ".compress." in k and k.endswith("weight"))
    save_file({**weights, key: weights[key][:, :-1].contiguous()}, export / "multiview.safetensors")
    with pytest.raises(ValueError, match=r"1 shape mismatches: projection_layers\..*compress"):
        load_multiview_unet(export, base_unet=copy.deepcopy(base_unet))
    del weights[key]
    save_file(weights, export / "multiview.safetensors")
    with pytest.raises(ValueError, match=r"multiview.safetensors .* 1 missing keys"):
        load_multiview_unet(export, base_unet=copy.deepcopy(base_unet))
    meta = json.loads((export / "multiview.json").read_text())
    meta["model"]["voxel_grid_size"] = "big"
    (export / "multiview.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"multiview.json: model.voxel_grid_size expects int"):
        load_multiview_unet(export, base_unet=copy.deepcopy(base_unet))


def test_bad_inputs_and_settings_are_refused(active_model, base_unet):
    batch = inputs()
    with pytest.raises(ValueError, match="not whole objects of n_views=4"):
        active_model(**dict(batch, n_views=4))
    with pytest.raises(ValueError, match=r"K has shape \(6, 4, 4\)"):
        active_model(**dict(batch, K=batch["w2c"]))
    with pytest.raises(ValueError, match="pose_features has shape"):
        active_model(**dict(batch, pose_features=batch["pose_features"][:, :8]))
    with pytest.raises(ValueError, match="cross_attention_kwargs"):
        active_model.unet(batch["latents"], 10, batch["encoder_hidden_states"])
    with pytest.raises(ValueError, match="projection_blocks: 'up_blocks.9'"):
        MultiViewUNet(copy.deepcopy(base_unet), ModelConfig(projection_blocks=("up_blocks.9",)))
    with pytest.raises(ValueError, match="model.pose_lora_rank must be at least 1"):
        MultiViewUNet(copy.deepcopy(base_unet), ModelConfig(pose_lora_rank=0))
    with pytest.raises(ValueError, match="unet_weights='lora' but the UNet has no peft adapter"):
        save_multiview_unet(active_model, "unused", unet_weights="lora")


def test_switching_everything_off_is_the_base_unet_for_any_n(base_unet):
    off = ModelConfig(cross_frame_attention=False, pose_lora=False, projection_layers=False)
    model = MultiViewUNet(copy.deepcopy(base_unet), off)
    assert not list(model.added_state_dict())
    batch = inputs()
    with torch.no_grad():
        expected = base_unet(batch["latents"], batch["timesteps"], batch["encoder_hidden_states"])
        torch.testing.assert_close(model(**batch), expected.sample, rtol=0, atol=1e-6)


def run_benchmark(monkeypatch, capsys, argv: list[str]) -> list[str]:
    monkeypatch.setattr(sys, "argv", ["model_step.py", *argv])
    runpy.run_path("bench/model_step.py", run_name="__main__")
    return capsys.readouterr().out.strip().splitlines()


def test_benchmark_prints_every_component_on_and_off(monkeypatch, capsys):
    lines = run_benchmark(
        monkeypatch,
        capsys,
        ["--sizes", "tiny", "--resolutions", "64", "--steps", "1", "--small-3d"],
    )
    rows = [line for line in lines if "images/s" in line]
    assert [row.split()[2] for row in rows] == ["stock", "+cfa", "+pose-lora", "+projection", "all"]


def test_full_size_benchmark_path_runs_on_cpu_with_a_tiny_unet(monkeypatch, capsys):
    argv = ["--full", "--device", "cpu", "--unet", "tiny", "--resolutions", "64", "--steps", "1"]
    lines = run_benchmark(monkeypatch, capsys, [*argv, "--variants", "stock", "all", "--small-3d"])
    rows = [line for line in lines if "images/s" in line]
    assert len(rows) == 2 and all("bf16" in row for row in rows)


def test_bf16_autocast_training_step_has_finite_gradients():
    # Regression: under bf16 autocast the background sample depths rounded to infinity and every
    # gradient became NaN; the renderer now runs its geometry in float32.
    torch.manual_seed(0)
    config = ModelConfig(
        voxel_grid_size=8, render_samples=8, projection_channels=8, pose_lora_rank=4
    )
    model = MultiViewUNet(build_unet(unet_config("tiny")), config)
    for parameter in model.projection_layers.parameters():
        torch.nn.init.normal_(parameter, std=0.02)  # make the zero-initialised layers active
    w2c = orbit(2, 30.0, 4.0)
    K = intrinsics_from_fov(48.0, 64, 64).expand(2, 3, 3)
    latents, encoder_hidden_states = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(
            latents,
            torch.full((2,), 500),
            encoder_hidden_states,
            K,
            w2c,
            pose_features(K, w2c, (64, 64)),
            n_views=2,
        )
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_disparity_at_infinity_reaches_every_renderer_and_the_last_sample(base_unet):
    config = dataclasses.replace(CONFIG, disparity_at_infinity=0.25)
    model = MultiViewUNet(copy.deepcopy(base_unet), config)
    disparities = {
        layer.renderer.disparity_at_infinity for layer in model.projection_layers.values()
    }
    assert disparities == {0.25}
    near, far = torch.tensor([1.0], dtype=torch.float64), torch.tensor([5.0], dtype=torch.float64)
    for disparity in (1e-3, 0.5):
        depths = sample_depths(near, far, 4, background=True, disparity_at_infinity=disparity)
        assert depths[0, -1].item() == pytest.approx(5.0 / disparity)  # the last one at far / d
    bad = dataclasses.replace(CONFIG, disparity_at_infinity=0.0)
    with pytest.raises(ValueError, match="model.disparity_at_infinity must be in"):
        MultiViewUNet(copy.deepcopy(base_unet), bad)


def test_the_paper_disparity_by_default_and_the_old_one_for_configs_saved_before(tmp_path):
    assert load_config("configs/co3d_sd21.yaml").model.disparity_at_infinity == 0.5
    saved = config_to_dict(Config())
    del saved["model"]["disparity_at_infinity"]  # a config.json written before the key
    del saved["train"]["novel_views"]  # (and before this one: every view was lifted)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = read_config_json(tmp_path / "config.json")
    assert old.model.disparity_at_infinity == 1e-3 and old.train.novel_views == 0
    assert Config().train.novel_views == 1  # the reference's n_novel_images
