"""The shipped toy world: small, safetensors only, loads from anywhere, and knows its objects.

The quality figures here are a fast subset of ``bench/toy_quality.py`` on a handful of held-out
objects; the bench measures them on all prompts and more objects.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

import infer
from viewdiff.data.toy_objects import toy_prompts
from viewdiff.prior.load import load_export, read_export
from viewdiff.toy.assets import TOY_ASSETS, TOY_MULTIVIEW, TOY_SD
from viewdiff.toy.classify import classifier_accuracy, classify_colour, fit_shape_classifier
from viewdiff.toy.quality import prior_views, toy_orbit, unit
from viewdiff.toy.t2i_training import generate
from viewdiff.toy.vae_training import reconstruction_psnr


@pytest.fixture(scope="module")
def toy_sd() -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_toy_world_is_small_and_safetensors_only():
    files = [p for p in TOY_ASSETS.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".txt"}
    assert sum(p.stat().st_size for p in files) <= 20e6
    assert (TOY_SD / "model_index.json").is_file()
    info = read_export(TOY_MULTIVIEW)
    assert Path(info.pretrained_model).resolve() == TOY_SD.resolve()  # found beside it


def test_infer_samples_the_shipped_prior_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative to the repository
    argv = ["sample", "--checkpoint", str(TOY_MULTIVIEW), "--prompt", "a red ball",
            "--views", "4", "--out", "red-ball"]  # fmt: skip
    assert infer.main(argv) == 0
    views = sorted((tmp_path / "red-ball" / "views").glob("*.png"))
    assert len(views) == 4 and (tmp_path / "red-ball" / "grid.png").is_file()
    pixels = [torch.from_numpy(np.array(Image.open(view))).permute(2, 0, 1) for view in views]
    images = torch.stack(pixels).float() / 255.0
    assert classify_colour(images).count("red") >= 3


def test_the_toy_vae_reconstructs_held_out_views(toy_sd, toy_heldout):
    assert reconstruction_psnr(toy_sd.vae, toy_heldout.floats()) >= 26.0


def test_the_toy_sd_draws_the_colour_and_shape_of_every_prompt(toy_sd, toy_fit):
    classifier = fit_shape_classifier(unit(toy_fit), toy_fit.categories)
    prompts = toy_prompts()
    images = generate(toy_sd, prompts, seed=1000, steps=20, guidance_scale=4.0)
    scores = classifier_accuracy(classifier, images, prompts)
    assert scores["colour"] >= 0.85 and scores["shape"] >= 0.7, scores


def test_the_prior_draws_every_view_of_its_prompt(toy_fit):
    classifier = fit_shape_classifier(unit(toy_fit), toy_fit.categories)
    prior = load_export(TOY_MULTIVIEW)
    settings = prior.info.config.sample
    prompts = toy_prompts()[::3]  # 6 prompts: every colour, every shape
    views = prior_views(prior, prompts, toy_orbit(settings, 4, 64), settings, seed=2000)
    per_view = [p for p in prompts for _ in range(4)]
    scores = classifier_accuracy(classifier, views.flatten(0, 1), per_view)
    assert scores["colour"] >= 0.85 and scores["shape"] >= 0.7, scores
