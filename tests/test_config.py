"""Configs: strict presets, dotted overrides, JSON round trip, documentation of every key."""

import dataclasses
import json
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml

from viewdiff import config as cfg
from viewdiff.strict_config import describe_fields, field_docs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def all_sections(cls=cfg.Config):
    """Every dataclass in the config tree."""
    yield cls
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from all_sections(tp)


def test_every_field_is_documented():
    for section in all_sections():
        docs = field_docs(section)
        missing = [f.name for f in dataclasses.fields(section) if not docs.get(f.name)]
        assert not missing, f"{section.__name__} fields without a docstring: {missing}"


def test_help_lists_every_key_with_its_documentation():
    text = "\n".join(describe_fields(cfg.Config))
    assert "train.learning_rate (float, default 5e-05)" in text
    assert "AdamW learning rate of the UNet" in text
    assert "train.mixed_precision ('no' | 'fp16' | 'bf16' | null, default None)" in text


def test_presets_load():
    paper = cfg.load_config(CONFIGS / "co3d_sd21.yaml")
    assert paper.model.pretrained_model == "stabilityai/stable-diffusion-2-1-base"
    assert (paper.data.image_size, paper.data.n_views, paper.model.pose_lora_rank) == (256, 5, 64)
    assert (paper.train.learning_rate, paper.train.renderer_learning_rate) == (5e-5, 1e-3)
    assert (paper.train.batch_size, paper.train.gradient_accumulation_steps) == (4, 8)
    # The defaults are the paper's settings; the preset only adds what a default cannot know.
    assert dataclasses.replace(paper, data=cfg.DataConfig()) == cfg.Config()
    tiny = cfg.load_config(CONFIGS / "tiny_cpu.yaml")
    assert tiny.data.image_size % 8 == 0 and tiny.train.mixed_precision is None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return path


def test_yaml_reads_scientific_notation_as_float(tmp_path):
    config = cfg.load_config(
        write(tmp_path, "train:\n  learning_rate: 3e-5\n  adam_epsilon: 1E-6\n")
    )
    assert config.train.learning_rate == 3e-5 and config.train.adam_epsilon == 1e-6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "train:\n  learnig_rate: 1.0\n",
            r"preset.yaml: unknown key 'train.learnig_rate'; did you mean 'train.learning_rate'",
        ),
        ("trian:\n  seed: 1\n", r"preset.yaml: unknown key 'trian'; did you mean 'train'"),
        ("train:\n  batch_size: four\n", r"preset.yaml: train.batch_size expects int, got 'four'"),
        ("train:\n  batch_size: 2.5\n", r"train.batch_size expects int, got 2.5"),
        (
            "model:\n  cross_frame_attention: 1\n",
            r"model.cross_frame_attention expects bool, got 1",
        ),
        (
            "train:\n  mixed_precision: fp8\n",
            r"train.mixed_precision expects 'no' \| 'fp16' \| 'bf16'",
        ),
        ("data:\n  categories: teddybear\n", r"data.categories expects tuple\[str, ...\]"),
        ("train: 3\n", r"train is a section; expected a mapping"),
        ("- a\n- b\n", r"expected a mapping of sections"),
        ("train:\n  seed: 1\n  seed: 2\n", r"invalid YAML in .*preset.yaml.*duplicate key 'seed'"),
        ("train: [unclosed\n", r"invalid YAML in .*preset.yaml"),
    ],
)
def test_bad_presets_name_the_key_and_the_file(tmp_path, text, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config(write(tmp_path, text))


def test_missing_preset_names_the_path(tmp_path):
    with pytest.raises(cfg.ConfigError, match="config file not found: .*nowhere.yaml"):
        cfg.load_config(tmp_path / "nowhere.yaml")


def test_empty_preset_is_the_defaults(tmp_path):
    assert cfg.load_config(write(tmp_path, "")) == cfg.Config()


def test_overrides_are_read_as_the_field_type():
    config = cfg.load_config(
        None,
        [
            "train.learning_rate=1e-4",
            "train.max_steps=10",
            "train.gradient_checkpointing=true",
            "train.resume=null",
            "train.output_dir=runs/yes",  # strings stay verbatim, even YAML words
            "data.categories=teddybear, hydrant",
            "model.projection_blocks=[mid_block]",
        ],
    )
    assert config.train.learning_rate == 1e-4 and config.train.max_steps == 10
    assert config.train.gradient_checkpointing is True and config.train.resume is None
    assert config.train.output_dir == "runs/yes"
    assert config.data.categories == ("teddybear", "hydrant")
    assert config.model.projection_blocks == ("mid_block",)
    assert cfg.load_config(None, ["data.categories="]).data.categories == ()


def test_overrides_apply_after_the_preset(tmp_path):
    preset = write(tmp_path, "train:\n  seed: 5\n  max_steps: 7\n")
    config = cfg.load_config(preset, ["train.seed=6"])
    assert (config.train.seed, config.train.max_steps) == (6, 7)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.lerning_rate=1",
            r"override 'train.lerning_rate=1': unknown key 'train.lerning_rate'",
        ),
        ("trian.seed=1", r"unknown key 'trian'"),
        (
            "train.batch_size=four",
            r"override 'train.batch_size=four': train.batch_size expects int",
        ),
        ("train.mixed_precision=fp8", r"expects 'no' \| 'fp16' \| 'bf16', got 'fp8'"),
        ("train.seed", r"expected key=value"),
        ("train=1", r"'train' is a section"),
        ("train.seed.x=1", r"'train.seed' has no sub-keys"),
        ("data.categories=[1, 2]", r"data.categories\[0\] expects str, got 1"),
        ("train.learning_rate=.nan", r"train.learning_rate must be a finite number, got nan"),
        ("sample.guidance_scale=.inf", r"sample.guidance_scale must be a finite number"),
        ("sample.guidance_scale=-.inf", r"sample.guidance_scale must be a finite number"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config(None, [override])


def test_json_round_trip(tmp_path):
    config = cfg.load_config(CONFIGS / "co3d_sd21.yaml", ["train.resume=null", "train.seed=3"])
    cfg.save_config(config, tmp_path / "config.json")
    assert cfg.read_config_json(tmp_path / "config.json") == config
    assert (
        json.loads((tmp_path / "config.json").read_text())["data"]["categories"][0] == "teddybear"
    )


def test_printed_yaml_loads_back_as_a_preset(tmp_path):
    config = cfg.load_config(CONFIGS / "tiny_cpu.yaml", ["train.learning_rate=2e-4"])
    assert cfg.load_config(write(tmp_path, cfg.config_to_yaml(config))) == config
    assert yaml.safe_load(cfg.config_to_yaml(config))["train"]["learning_rate"] == 2e-4


def test_bad_json_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"train": {"seed": "x"}}')
    with pytest.raises(cfg.ConfigError, match=r"config.json: train.seed expects int"):
        cfg.read_config_json(path)
    path.write_text("{")
    with pytest.raises(cfg.ConfigError, match=r"config.json: cannot read config JSON"):
        cfg.read_config_json(path)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.Config().train.seed = 1  # type: ignore[misc]
