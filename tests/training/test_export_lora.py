"""train.mode=lora exports its base-UNet LoRA in diffusers' format, for any SD pipeline."""

import dataclasses

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from viewdiff.config import Config, DataConfig, TrainConfig
from viewdiff.diffusion import noise_scheduler
from viewdiff.model.persistence import ADAPTER_WEIGHTS_FILE, DIFFUSERS_LORA_FILE, UNET_LORA_DIR
from viewdiff.training.export import export_model
from viewdiff.training.training_model import build_training_model

MODEL_SETTINGS = {"pose_lora_rank": 4, "projection_channels": 8, "voxel_grid_size": 8,
                  "render_samples": 8, "base_lora_rank": 4}  # fmt: skip


def unet_output(unet: UNet2DConditionModel) -> torch.Tensor:
    """The plain UNet's noise prediction for fixed random inputs."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500, 20]), encoder_hidden_states=text).sample


def test_a_lora_export_loads_into_a_plain_sd_pipeline(tiny_sd, tmp_path, tiny_export):
    config = Config(
        model=dataclasses.replace(Config().model, pretrained_model=str(tiny_sd), **MODEL_SETTINGS),
        data=DataConfig(image_size=64),
        train=TrainConfig(output_dir=str(tmp_path), mode="lora"),
    )
    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    model = build_training_model(unet, config.model, "lora", gradient_checkpointing=False)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # peft's LoRA up-projections start at zero: as if trained
        for name, parameter in model.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    schedule = noise_scheduler(dict(DDPMScheduler.load_config(tiny_sd / "scheduler")), True,
                               "epsilon")  # fmt: skip
    export = export_model(model, config, schedule, step=4)
    with safe_open(export / DIFFUSERS_LORA_FILE, framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(key.startswith("unet.") for key in keys)
    assert not any("attention_layers" in key or "projection" in key for key in keys)
    # diffusers reads it into a Stable Diffusion pipeline of the base, which changes.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    before = unet_output(pipe.unet)
    pipe.load_lora_weights(export)
    assert pipe.get_list_adapters() == {"unet": ["default_0"]}
    after = unet_output(pipe.unet)
    assert (after - before).abs().max() > 1e-3
    # ... into the same UNet as our peft adapter (unet_lora/) on the plain base UNet.
    reference = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    reference.add_adapter(LoraConfig.from_pretrained(str(export / UNET_LORA_DIR)))
    set_peft_model_state_dict(reference, load_file(export / UNET_LORA_DIR / ADAPTER_WEIGHTS_FILE))
    torch.testing.assert_close(after, unet_output(reference), rtol=0, atol=1e-5)
    # Exports of other modes have no base-UNet LoRA, and no such file.
    assert not (tiny_export / DIFFUSERS_LORA_FILE).exists()
