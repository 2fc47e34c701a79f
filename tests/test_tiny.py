"""The offline tiny Stable Diffusion pipeline and the SD 2.1 base configs."""

import hashlib
import inspect
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTokenizer

from viewdiff.commands.tiny import main
from viewdiff.tiny import (
    build_tiny_pipeline,
    build_unet,
    build_vae,
    bytes_to_unicode,
    sd21_base_scheduler_config,
    sd21_base_unet_config,
    sd21_base_vae_config,
    unet_config,
    vae_config,
)

CAPTION = "a red can with a blue stripe"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_hashes(folder: Path) -> dict[str, str]:
    files = sorted(folder.glob("*/*.safetensors"))
    assert len(files) == 3  # unet, vae, text_encoder
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def pipe(tiny_sd: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_loads_offline_without_safety_checker(pipe: StableDiffusionPipeline) -> None:
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.vae_scale_factor == 8
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    schedule = {k: pipe.scheduler.config[k] for k in sd21_base_scheduler_config()}
    assert schedule == sd21_base_scheduler_config()


def test_pipeline_generates_64px_image(pipe: StableDiffusionPipeline) -> None:
    generator = torch.Generator().manual_seed(0)
    out = pipe(CAPTION, height=64, width=64, num_inference_steps=2, generator=generator)
    assert out.images[0].size == (64, 64)


@pytest.mark.parametrize("latent_size", [8, 16])  # 64 px and 128 px images
def test_unet_runs_at_64_and_128_px(pipe: StableDiffusionPipeline, latent_size: int) -> None:
    latents = torch.randn(2, 4, latent_size, latent_size)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        out = pipe.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text).sample
    assert out.shape == latents.shape


def test_tiny_unet_is_about_1m_params_with_sd21_layout(pipe: StableDiffusionPipeline) -> None:
    assert 0.8e6 <= n_params(pipe.unet) <= 1.5e6
    sd21 = sd21_base_unet_config()
    for key in ("down_block_types", "up_block_types", "use_linear_projection", "in_channels"):
        assert pipe.unet.config[key] == type(pipe.unet.config[key])(sd21[key])
    assert type(pipe.unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"


def test_vae_downsamples_by_8(pipe: StableDiffusionPipeline) -> None:
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(image).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample
    assert latents.shape == (1, 4, 8, 8)
    assert decoded.shape == image.shape
    assert pipe.vae.config.scaling_factor == 0.18215


def test_tokenizer_round_trips_a_caption(tiny_sd: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer")
    ids = tokenizer(CAPTION).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # Embedded words are learned as whole-word merges.
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "red</w>", "can</w>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == CAPTION
    odd = "Zebra-striped mug, 3 colours é"
    decoded = tokenizer.decode(tokenizer(odd).input_ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == odd.lower().replace(" ", "")


def test_bytes_to_unicode_covers_every_byte_once() -> None:
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert not any(c.isspace() for c in mapping.values())
    assert mapping[ord("a")] == "a" and mapping[ord(" ")] == "Ġ"  # as in GPT-2 / CLIP


def test_cli_rebuild_is_byte_identical_and_loadable(
    tiny_sd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main([str(out), "--size", "tiny", "--seed", "0"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0 and "unet 1.11M" in summary and str(out) in summary
    assert weight_hashes(out) == weight_hashes(tiny_sd)
    assert isinstance(StableDiffusionPipeline.from_pretrained(out), StableDiffusionPipeline)


def test_other_seed_gives_other_weights(tiny_sd: Path, tmp_path: Path) -> None:
    other = weight_hashes(build_tiny_pipeline(tmp_path, seed=1))
    assert all(other[name] != digest for name, digest in weight_hashes(tiny_sd).items())


def test_building_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_unet(unet_config("tiny"), seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (UNet2DConditionModel, sd21_base_unet_config()),
        (AutoencoderKL, sd21_base_vae_config()),
    ],
)
def test_sd21_configs_only_use_accepted_keys(cls: type, config: dict) -> None:
    assert set(config) <= set(inspect.signature(cls.__init__).parameters)


def test_sd21_base_unet_builds_at_full_size() -> None:
    with torch.device("meta"):
        sd21 = build_unet(sd21_base_unet_config())
        mid = build_unet(unet_config("mid"))
        tiny = build_unet(unet_config("tiny"))
    assert 860e6 <= n_params(sd21) <= 870e6  # 865.9M
    assert 15e6 <= n_params(mid) <= 40e6
    # Same module names at every size: mid is SD 2.1 narrowed, tiny also drops a layer per block.
    assert set(mid.state_dict()) == set(sd21.state_dict())
    assert set(tiny.state_dict()) <= set(sd21.state_dict())


def test_sd21_base_vae_downsamples_by_8() -> None:
    config = sd21_base_vae_config()
    assert len(config["block_out_channels"]) == 4 and config["latent_channels"] == 4
    assert len(vae_config("tiny")["block_out_channels"]) == 4
    with torch.device("meta"):
        assert 80e6 <= n_params(build_vae(config)) <= 90e6  # 83.7M
