"""Joint multi-view sampling (validation now, inference later) on a tiny pipeline."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.config import ModelConfig
from viewdiff.diffusion import noise_scheduler
from viewdiff.model import MultiViewUNet
from viewdiff.prior.call import decode_latents, encode_images, encode_prompts
from viewdiff.sampling import ddim_scheduler, sample_views
from viewdiff.tiny import sd21_base_scheduler_config

CONFIG = ModelConfig(pose_lora_rank=4, projection_channels=8, voxel_grid_size=8, render_samples=8)


class Recorder(nn.Module):
    """The model, recording what every call receives."""

    def __init__(self, model: MultiViewUNet) -> None:
        super().__init__()
        self.model, self.unet, self.calls = model, model.unet, []

    def forward(self, latents, timesteps, text, K, w2c, pose, **kwargs):
        self.calls.append(
            {"rows": latents.shape[0], "timesteps": timesteps, "text": text, "K": K, "pose": pose}
        )
        return self.model(latents, timesteps, text, K, w2c, pose, **kwargs)


@pytest.fixture(scope="module")
def pipeline(tiny_sd):
    torch.manual_seed(0)
    model = MultiViewUNet(UNet2DConditionModel.from_pretrained(tiny_sd / "unet"), CONFIG).eval()
    return {
        "model": Recorder(model),
        "vae": AutoencoderKL.from_pretrained(tiny_sd / "vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(tiny_sd / "text_encoder").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer"),
    }


def sample(pipeline, seed=0, guidance=3.0, known=None, prompts=("a red box", "a ball")):
    n_views = 3
    K = intrinsics_from_fov(48.0, 64, 64).expand(len(prompts), n_views, 3, 3)
    w2c = orbit(n_views, 30.0, 4.0).expand(len(prompts), n_views, 4, 4)
    scheduler = ddim_scheduler(
        noise_scheduler(sd21_base_scheduler_config(), True, "epsilon").config
    )
    pipeline["model"].calls.clear()
    return sample_views(
        **pipeline,
        scheduler=scheduler,
        prompts=list(prompts),
        K=K,
        w2c=w2c,
        image_size_hw=(64, 64),
        num_inference_steps=2,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        known_images=known,
    )


def test_views_are_seeded_images_with_guidance_on_dropped_text_and_kept_cameras(pipeline):
    images = sample(pipeline)
    assert images.shape == (2, 3, 3, 64, 64) and images.abs().max() <= 1
    torch.testing.assert_close(sample(pipeline), images, rtol=0, atol=0)
    assert not torch.equal(sample(pipeline, seed=1), images)
    calls = pipeline["model"].calls
    assert len(calls) == 2 and all(call["rows"] == 2 * 6 for call in calls)  # [uncond, cond]
    empty = encode_prompts(pipeline["text_encoder"], pipeline["tokenizer"], [""])[0]
    text, K, pose = calls[0]["text"], calls[0]["K"], calls[0]["pose"]
    torch.testing.assert_close(text[:6], empty.expand(6, -1, -1))  # text dropped ...
    assert not torch.allclose(text[6:], empty.expand(6, -1, -1))
    torch.testing.assert_close(K[:6], K[6:])  # ... cameras kept
    torch.testing.assert_close(pose[:6], pose[6:])
    sample(pipeline, guidance=1.0)
    assert all(call["rows"] == 6 for call in pipeline["model"].calls)  # no guidance: one pass


def test_known_views_stay_given_at_timestep_zero(pipeline):
    known = torch.rand(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    images = sample(pipeline, known=known)
    vae = pipeline["vae"]
    expected = decode_latents(vae, encode_images(vae, known, sample=False)).reshape(2, 1, 3, 64, 64)
    torch.testing.assert_close(images[:, :1], expected, rtol=0, atol=1e-4)  # batch numerics
    for call in pipeline["model"].calls:
        timesteps = call["timesteps"].reshape(2, 2, 3)  # (uncond/cond, objects, views)
        assert (timesteps[..., 0] == 0).all() and (timesteps[..., 1:] > 0).all()
    with pytest.raises(ValueError, match="the first M views"):
        sample(pipeline, known=torch.zeros(2, 3, 3, 64, 64))


def test_ddim_spacing_avoids_the_pure_noise_step_of_epsilon_models():
    for prediction_type, first in (("epsilon", 951), ("v_prediction", 999)):
        schedule = noise_scheduler(sd21_base_scheduler_config(), True, prediction_type)
        scheduler = ddim_scheduler(dict(schedule.config))
        scheduler.set_timesteps(20)
        assert scheduler.timesteps[0] == first
