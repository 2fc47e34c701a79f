"""Config value checks: one check per section, so that a bad value fails the same way from a
preset, an override, a command's flags and the training preflight; ``sds.fit`` nests 3DGS's
``FitConfig``, round-trips, and old exports' flat ``sds:`` keys still load."""

import dataclasses
import json
from pathlib import Path

import pytest

from viewdiff import config as cfg
from viewdiff.commands.infer import build_parser
from viewdiff.commands.sds import sds_settings
from viewdiff.inference.autoregressive import check_sample_config
from viewdiff.scene.fit import FitConfig
from viewdiff.sds.config import SDS_FIT, SdsConfig, fitter_config
from viewdiff.strict_config import describe_fields
from viewdiff.training.preflight import InputError, check_train_values


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return path


def preset_error(tmp_path: Path, key: str, value: str) -> str:
    """The error of a preset that sets the dotted ``key`` to ``value``."""
    parts = key.split(".")
    text = "".join(f"{'  ' * depth}{part}:\n" for depth, part in enumerate(parts[:-1]))
    with pytest.raises(cfg.ConfigError) as error:
        cfg.load_config(write(tmp_path, f"{text}{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\n"))
    return str(error.value)


def override_error(key: str, value: str) -> str:
    """The error of the override ``key=value``."""
    with pytest.raises(cfg.ConfigError) as error:
        cfg.load_config(None, [f"{key}={value}"])
    return str(error.value)


def sds_flag_error(*flags: str) -> str:
    """The error of ``infer.py sds`` with these flags (before any file is read)."""
    args = build_parser().parse_args(["sds", "--checkpoint", "x", "--prompt", "a", "--out", "o",
                                      *flags])  # fmt: skip
    with pytest.raises(ValueError) as error:
        sds_settings(args)
    return str(error.value)


def after_source(message: str) -> str:
    """A message without its leading "<where>: " (the file, overrides or flags)."""
    return message.split(": ", 1)[1]


@pytest.mark.parametrize(
    ("key", "value", "flags", "message"),
    [
        ("sds.views", "1", ["--views", "1"], "sds.views (1) must be 0 (the export's) or >= 2"),
        ("sds.image_size", "30", ["--size", "30"], "sds.image_size (30) 0 or a multiple of 8"),
        ("sds.guidance_scale", "0", ["--guidance", "0"], "sds.guidance_scale must be positive"),
    ],
)
def test_a_bad_sds_value_fails_the_same_way_from_preset_override_and_flag(
    tmp_path, key, value, flags, message
):
    from_preset = preset_error(tmp_path, key, value)
    from_override = override_error(key, value)
    from_flag = sds_flag_error(*flags)
    assert from_preset.startswith(f"{tmp_path / 'preset.yaml'}: ")
    assert from_override.startswith("overrides: ") and from_flag.startswith("flags: ")
    assert after_source(from_preset) == after_source(from_override) == after_source(from_flag)
    assert message in from_flag


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.checkpoint_every", "0", "train.checkpoint_every must be at least 1, got 0"),
        ("train.adam_beta2", "1.0", "train.adam_beta2 must be finite and in [0, 1), got 1.0"),
        ("train.max_grad_norm", "-1", "train.max_grad_norm must be finite and non-negative"),
        ("train.lr_power", "0", "train.lr_power > 0"),
        ("train.novel_views", "5", "train.novel_views must be in [0, data.n_views=5)"),
        ("data.n_views", "0", "data.n_views must be at least 1, got 0"),
        ("data.image_size", "60", "data.image_size must be a positive multiple of 8"),
        ("model.pose_lora_rank", "0", "model.pose_lora_rank must be at least 1, got 0"),
        ("model.voxel_grid_size", "7", "model.voxel_grid_size must be even and >= 2, got 7"),
        ("model.disparity_at_infinity", "0", "model.disparity_at_infinity must be in (0, 1)"),
        ("sample.window_views", "0", "sample.window_views must be at least 1, got 0"),
        ("sample.radius", "0", "sample.radius must be finite and positive, got 0.0"),
        ("sds.fit.sh_degree", "4", "sds.fit.sh_degree must be 0..3, got 4"),
        ("sds.fit.feature_lr", "-1", "sds.fit.feature_lr must be finite and >= 0, got -1.0"),
        ("sds.t_max", "1.5", "sds.t_min, sds.t_max must be 0 <= min <= max <= 1"),
    ],
)
def test_a_bad_value_fails_the_same_way_from_preset_and_override(tmp_path, key, value, message):
    from_preset = preset_error(tmp_path, key, value)
    from_override = override_error(key, value)
    assert message in from_preset
    assert after_source(from_preset) == after_source(from_override)


def test_code_that_builds_configs_reaches_the_same_checks():
    # train.py's preflight (configs built in code) and the commands' sampler flags.
    bad_train = dataclasses.replace(cfg.Config().train, checkpoint_every=0)
    with pytest.raises(InputError) as error:
        check_train_values(dataclasses.replace(cfg.Config(), train=bad_train))
    assert str(error.value) == after_source(override_error("train.checkpoint_every", "0"))
    with pytest.raises(ValueError) as error:
        check_sample_config(dataclasses.replace(cfg.SampleConfig(), window_views=0))
    assert str(error.value) == after_source(override_error("sample.window_views", "0"))


def test_every_preset_and_the_defaults_pass_the_checks():
    cfg.Config().check()
    for path in sorted(Path(cfg.__file__).parent.joinpath("configs").glob("*.yaml")):
        cfg.load_config(path).check()


def test_sds_flags_map_onto_sds_fit():
    args = build_parser().parse_args(["sds", "--checkpoint", "x", "--prompt", "a", "--out", "o",
                                      "--background", "0.1", "0.2", "0.3", "--lr", "2", "--steps",
                                      "40", "--seed", "3", "sds.fit.densify_until=30"])  # fmt: skip
    config = sds_settings(args)
    assert config.fit.background == (0.1, 0.2, 0.3) and config.fit.densify_until == 30
    assert config.fit.feature_lr == 2 * SDS_FIT.feature_lr
    assert config.fit.position_lr_final == 2 * SDS_FIT.position_lr_final
    fitter = fitter_config(config)  # the run's steps and seed, SH bands spread over the run
    assert (fitter.iterations, fitter.seed, fitter.background) == (40, 3, (0.1, 0.2, 0.3))
    assert "overrides: sds.fit.sh_degree must be 0..3" in sds_flag_error("sds.fit.sh_degree=9")


def test_sds_fit_keys_the_run_sets_are_refused():
    assert "set sds.steps instead" in override_error("sds.fit.iterations", "10")
    assert "set sds.seed instead" in override_error("sds.fit.seed", "1")
    background = override_error("sds.fit.background", "[0.1, 0.2]")
    assert "sds.fit.background expects tuple[float, float, float], got [0.1, 0.2]" in background


def test_a_flat_sds_key_points_to_sds_fit(tmp_path):
    assert "did you mean 'sds.fit.feature_lr'?" in preset_error(tmp_path, "sds.feature_lr", "1")
    assert "did you mean 'sds.fit.max_gaussians'" in override_error("sds.max_gaussians", "9")


def test_sds_fit_round_trips_and_fills_in_from_the_sds_defaults(tmp_path):
    partial = cfg.load_config(write(tmp_path, "sds:\n  fit:\n    feature_lr: 3e-2\n"))
    # Unset keys of sds.fit are SDS's defaults, not FitConfig's (3DGS's).
    assert partial.sds.fit == dataclasses.replace(SDS_FIT, feature_lr=3e-2)
    assert partial.sds.fit.sh_degree == 0 != FitConfig().sh_degree
    config = cfg.load_config(
        "configs/sds_tiny.yaml", ["sds.fit.background=0.1,0.2,0.3", "sds.fit.max_gaussians=null"]
    )
    assert config.sds.fit.background == (0.1, 0.2, 0.3) and config.sds.fit.max_gaussians is None
    cfg.save_config(config, tmp_path / "config.json")
    assert cfg.read_config_json(tmp_path / "config.json") == config
    saved = json.loads((tmp_path / "config.json").read_text())["sds"]
    assert saved["fit"]["max_gaussians"] is None and "feature_lr" not in saved
    assert cfg.load_config(write(tmp_path, cfg.config_to_yaml(config))) == config
    help_text = "\n".join(describe_fields(SdsConfig))
    assert "fit.feature_lr (float, default 0.01)" in help_text  # SDS's default, not 3DGS's


def test_an_old_export_with_flat_sds_keys_loads(tmp_path):
    saved = cfg.config_to_dict(cfg.Config())
    del saved["sds"]["fit"]
    # An sds section written before sds.fit: the scene's optimisation sat directly under sds.
    saved["sds"] |= {"sh_degree": 1, "position_lr_init": 2e-3, "position_lr_final": 3e-5,
                     "feature_lr": 2e-2, "opacity_lr": 4e-2, "scaling_lr": 6e-3,
                     "rotation_lr": 2e-3, "densify_from": 50, "densify_until": 350,
                     "densify_interval": 50, "densify_grad_threshold": 1e-3,
                     "opacity_reset_interval": 1000, "min_opacity": 0.01, "max_gaussians": 6000,
                     "background": [0.2, 0.3, 0.4]}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = cfg.read_config_json(tmp_path / "config.json")
    expected = dataclasses.replace(
        SDS_FIT, sh_degree=1, position_lr_init=2e-3, position_lr_final=3e-5, feature_lr=2e-2,
        opacity_lr=4e-2, scaling_lr=6e-3, rotation_lr=2e-3, densify_from=50, densify_until=350,
        densify_interval=50, densify_grad_threshold=1e-3, opacity_reset_interval=1000,
        min_opacity=0.01, max_gaussians=6000, background=(0.2, 0.3, 0.4),
    )  # fmt: skip
    assert old.sds == dataclasses.replace(SdsConfig(), fit=expected)
    # The fitter runs as the old loop built it: every flat key, the run's steps and seed.
    fitter = fitter_config(old.sds)
    assert fitter.iterations == old.sds.steps and fitter.sh_increase_interval == 10_000 // 2
