"""``MultiViewPipeline``: diffusers' calling conventions around the sampler of infer.py sample."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler
from PIL import Image

import infer
from viewdiff.cameras.orbits import orbit
from viewdiff.inference.autoregressive import generate_views
from viewdiff.inference.pipeline import MultiViewPipeline
from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.prior.self_contained import write_self_contained


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def folder(tiny_export, tmp_path_factory):
    """The tiny export written as a self-contained folder, then copied to another place."""
    made = write_self_contained(tiny_export, tmp_path_factory.mktemp("made") / "prior")
    copied = tmp_path_factory.mktemp("copied") / "prior"
    shutil.copytree(made, copied)
    shutil.rmtree(made)
    return copied


@pytest.fixture
def pipe(folder, tmp_path, monkeypatch):
    """The pipeline of the copied folder, loaded from a third working directory."""
    monkeypatch.chdir(tmp_path)
    pipe = MultiViewPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_pipeline_gives_the_views_of_load_export_and_generate_views(pipe, prior):
    cameras = orbit_trajectory(3, 20.0, 4.5, 64)
    prompts = ["a red box", "a blue ball"]
    out = pipe(prompts, cameras=cameras, num_inference_steps=2, guidance_scale=5.0,
               generator=[seeded(3), seeded(8)], output_type="pt")  # fmt: skip
    sample = dataclasses.replace(prior.info.config.sample, num_inference_steps=2,
                                 guidance_scale=5.0)  # fmt: skip
    expected = generate_views(prior, prompts, cameras, sample, [3, 8], show_progress=False)
    assert out.images.shape == (2, 3, 3, 64, 64) and out.cameras is cameras
    torch.testing.assert_close(out.images, ((expected + 1) / 2).clamp(0, 1), rtol=0, atol=1e-6)
    other = pipe(prompts, cameras=cameras, num_inference_steps=2, guidance_scale=5.0,
                 generator=[seeded(4), seeded(8)], output_type="pt").images  # fmt: skip
    assert not torch.equal(other[0], out.images[0]) and torch.equal(other[1], out.images[1])
    # The sampler is pipe.scheduler, swapped as in diffusers.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim = pipe(prompts[:1], cameras=cameras, num_inference_steps=2, generator=seeded(3),
                output_type="pt").images  # fmt: skip
    sample = dataclasses.replace(
        sample, scheduler="ddim", guidance_scale=pipe.export.config.sample.guidance_scale
    )
    expected = generate_views(prior, prompts[:1], cameras, sample, [3], show_progress=False)
    torch.testing.assert_close(ddim, ((expected + 1) / 2).clamp(0, 1), rtol=0, atol=1e-6)


def test_pil_and_numpy_outputs_are_the_pngs_of_infer_sample(pipe, folder, tmp_path):
    pil = pipe("a red can", num_views=2, num_inference_steps=2, generator=seeded(5)).images
    assert len(pil) == 1 and len(pil[0]) == 2 and pil[0][1].size == (64, 64)
    out = pipe("a red can", num_views=2, num_inference_steps=2, generator=seeded(5),
               output_type="np")  # fmt: skip
    assert out.images.shape == (1, 2, 64, 64, 3)
    assert np.abs(np.asarray(pil[0][1]) / 255.0 - out.images[0, 1]).max() <= 0.5 / 255 + 1e-6
    sample = pipe.export.config.sample  # the default orbit is the export's
    torch.testing.assert_close(out.cameras.w2c, orbit(2, sample.elevation_deg, sample.radius))
    argv = ["sample", "--checkpoint", str(folder), "--prompt", "a red can", "--views", "2",
            "--steps", "2", "--seed", "5", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert infer.main(argv) == 0
    for index in range(2):
        png = np.asarray(Image.open(tmp_path / "cli" / "views" / f"view_{index:03d}.png"))
        assert np.array_equal(png, np.asarray(pil[0][index]))


def test_what_the_pipeline_refuses(pipe):
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe("a box", num_views=1, output_type="latent")
    with pytest.raises(ValueError, match="1 generators for 2 prompts"):
        pipe(["a box", "a ball"], num_views=1, generator=[seeded(0)])
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="pipe.scheduler is a PNDMScheduler"):
        pipe("a box", num_views=1)
    with pytest.raises(NotImplementedError, match="write_self_contained"):
        pipe.save_pretrained("anywhere")
