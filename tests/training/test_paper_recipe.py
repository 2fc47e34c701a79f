"""The paper's training recipe beyond the loss: prompt dropout per view or per object, the prior
preservation batch (DreamBooth) and its set."""

import json
import math
import runpy
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

import train
import viewdiff.training.step
from viewdiff.cameras.checks import usable_cameras
from viewdiff.cameras.conventions import camera_centers, project
from viewdiff.cameras.orbits import cartesian_to_spherical
from viewdiff.config import Config, DataConfig, ModelConfig, config_to_dict, read_config_json
from viewdiff.data.prior_set import training_captions
from viewdiff.data.stream import build_loader
from viewdiff.model import MultiViewUNet
from viewdiff.training.base_pipeline import load_base_pipeline
from viewdiff.training.batches import model_inputs

REPO = Path(__file__).resolve().parents[2]


def make_prior_set(argv: list[str]) -> dict:
    """data/make_prior_set.py's main on ``argv``."""
    return runpy.run_path(str(REPO / "data/make_prior_set.py"))["main"](argv)


@pytest.fixture(scope="module")
def base(tiny_sd):
    return load_base_pipeline(ModelConfig(pretrained_model=str(tiny_sd)))


def fake_batch(objects: int, views: int, size: int = 16) -> dict:
    """A loader-shaped batch of random views with identity-ish cameras."""
    K = torch.tensor([[20.0, 0, size / 2 - 0.5], [0, 20.0, size / 2 - 0.5], [0, 0, 1]])
    return {
        "images": torch.rand(objects, views, 3, size, size) * 2 - 1,
        "prompt": [f"a red box {i}" for i in range(objects)],
        "K": K.expand(objects, views, 3, 3),
        "w2c": torch.eye(4).expand(objects, views, 4, 4),
        "pose_features": torch.zeros(objects, views, 10),
    }


@pytest.mark.parametrize("per", ["object", "view"])
def test_prompt_dropout_empties_whole_objects_or_single_views(base, per):
    batch = fake_batch(objects=8, views=3)
    generator = torch.Generator().manual_seed(0)
    text = model_inputs(batch, base, torch.device("cpu"), 0.5, generator, per)
    text = text.encoder_hidden_states.reshape(8, 3, -1)  # (B, N, 77 * D)
    empty = model_inputs(batch, base, torch.device("cpu"), 1.0, generator, per)
    empty = empty.encoder_hidden_states[0].flatten()
    dropped = torch.stack([(row - empty).abs().amax(dim=-1) < 1e-6 for row in text])  # (B, N)
    assert dropped.any() and not dropped.all()
    mixed = (dropped.any(dim=1) & ~dropped.all(dim=1)).any().item()
    # Per object all of an object's views go together; per view some objects are partly dropped.
    assert mixed == (per == "view")
    kept = [row for row, drop in zip(text, dropped, strict=True) if not drop.any()]
    assert all(torch.equal(row[0], row[1]) for row in kept)


def trained_weights(run_args, out, *overrides) -> dict:
    """The trainable weights after one training step with the overrides."""
    assert train.main(run_args(out, "train.max_steps=1", *overrides)) == 0
    return load_file(out / "checkpoints" / "checkpoint-1" / "trainable.safetensors")


def test_density_noise_in_training_is_seeded_by_the_step(run_args, tmp_path):
    noisy = [trained_weights(run_args, tmp_path / f"noisy{i}", "model.density_noise=1.0")
             for i in range(2)]  # fmt: skip
    clean = trained_weights(run_args, tmp_path / "clean", "model.density_noise=0")
    key = next(k for k in clean if "projection" in k and "expand" in k and k.endswith("weight"))
    for name, value in noisy[0].items():
        torch.testing.assert_close(noisy[1][name], value, rtol=0, atol=0, msg=name)
    assert (noisy[0][key] - clean[key]).abs().amax() > 0  # the noise reached the rendering


# Prior preservation: the set and the batch.


@pytest.fixture(scope="module")
def prior_shards(tiny_sd, train_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "shards"
    argv = ["--pretrained-model", str(tiny_sd), "--captions-from", str(train_shards), "--out",
            str(out), "--size", "64", "--steps", "2", "--images-per-caption", "2"]  # fmt: skip
    make_prior_set(argv)
    return out


def test_prior_set_writes_shards_the_loader_reads_at_one_view(prior_shards, train_shards):
    captions = {caption for _, caption in training_captions(str(train_shards), 64)}
    data = DataConfig(shards=str(prior_shards), image_size=64, n_views=1, num_workers=0)
    batch = next(iter(build_loader(data, batch_size=4, seed=0, resampled=False)))
    assert batch["images"].shape == (4, 1, 3, 64, 64)
    assert set(batch["prompt"]) <= captions
    K, w2c = batch["K"][:, 0].double(), batch["w2c"][:, 0].double()
    assert usable_cameras(K, w2c).all()
    azimuth, elevation, radius = cartesian_to_spherical(camera_centers(w2c)).unbind(-1)
    assert ((radius >= 2.0 - 1e-6) & (radius <= 4.0 + 1e-6)).all()
    assert ((elevation >= -1e-6) & (elevation <= math.radians(60.0) + 1e-6)).all()
    focal = K[:, 0, 0] / 64
    assert ((focal >= 565 / 512 - 1e-6) & (focal <= 590 / 512 + 1e-6)).all()
    # The camera looks at the box centre: it projects onto the principal point.
    centre = torch.zeros(len(K), 1, 3, dtype=K.dtype)
    uv, _ = project(centre, K, w2c)
    torch.testing.assert_close(uv[:, 0], K[:, :2, 2])
    # A re-run keeps the complete shards.
    shard = next(prior_shards.glob("*.tar"))
    written = shard.stat().st_mtime_ns
    make_prior_set(["--pretrained-model", "unused", "--captions-from", str(train_shards),
                         "--out", str(prior_shards), "--size", "64", "--steps", "2",
                         "--images-per-caption", "2"])  # fmt: skip
    assert shard.stat().st_mtime_ns == written


def test_prior_batch_runs_at_one_view_with_its_weight(
    run_args, prior_shards, tmp_path, monkeypatch
):
    calls, backward_losses = [], []
    forward, backward = MultiViewUNet.forward, Accelerator.backward

    def spy_forward(self, latents, timesteps, *args, n_views, **kwargs):
        calls.append((latents.shape[0], n_views, kwargs.get("unprojected_views")))
        return forward(self, latents, timesteps, *args, n_views=n_views, **kwargs)

    def spy_backward(self, loss, **kwargs):
        backward_losses.append(loss.item())
        return backward(self, loss, **kwargs)

    monkeypatch.setattr(MultiViewUNet, "forward", spy_forward)
    monkeypatch.setattr(Accelerator, "backward", spy_backward)
    prior_losses = []
    loss = viewdiff.training.step.micro_batch_loss

    def spy_loss(parts, batch, generator, prior=False):
        value = loss(parts, batch, generator, prior)
        if prior:
            prior_losses.append(value.item())
        return value

    monkeypatch.setattr(viewdiff.training.step, "micro_batch_loss", spy_loss)
    argv = run_args(tmp_path / "run", "train.max_steps=2", f"train.prior_shards={prior_shards}",
                    "train.prior_weight=0.25", "train.novel_views=1")  # fmt: skip
    assert train.main(argv) == 0
    # Per step: the prior batch (1 object x 1 view, nothing left out), then 1 object x 2 views.
    assert [(rows, n) for rows, n, _ in calls] == [(1, 1), (2, 2)] * 2  # (B*N rows, N)
    assert all(unprojected is None for _, n, unprojected in calls if n == 1)
    assert all(unprojected is not None for _, n, unprojected in calls if n == 2)
    assert backward_losses[0::2] == pytest.approx([0.25 * v for v in prior_losses], rel=1e-6)


def test_prior_weight_zero_trains_as_without_the_prior(run_args, prior_shards, tmp_path):
    without = trained_weights(run_args, tmp_path / "without")
    zero = trained_weights(run_args, tmp_path / "zero", f"train.prior_shards={prior_shards}",
                           "train.prior_weight=0")  # fmt: skip
    weighted = trained_weights(
        run_args, tmp_path / "weighted", f"train.prior_shards={prior_shards}"
    )
    for name, value in without.items():  # the multi-view batch draws the same with the prior on
        torch.testing.assert_close(zero[name], value, rtol=0, atol=0, msg=name)
    assert any((weighted[name] - value).abs().amax() > 0 for name, value in without.items())


def test_bad_prior_shards_exit_2_naming_the_key(run_args, tmp_path, capsys):
    argv = run_args(tmp_path / "run", f"train.prior_shards={tmp_path / 'nowhere'}")
    with pytest.raises(SystemExit) as exited:
        train.main(argv)
    assert exited.value.code == 2
    assert "train.prior_shards=" in capsys.readouterr().err


def test_the_paper_preset_prints_the_reference_values(capsys):
    assert train.main(["--config", str(REPO / "configs/co3d_sd21.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model, recipe = printed["model"], printed["train"]
    assert model["disparity_at_infinity"] == 0.5  # vol_rend_disparity_at_inf
    assert model["density_noise"] == 1.0  # train.py:252 sets inject_noise_sigma 1.0 to train
    assert recipe["novel_views"] == 1  # n_novel_images
    assert recipe["prompt_dropout"] == 0.2 and recipe["prompt_dropout_per"] == "view"
    assert recipe["prior_shards"] and recipe["prior_weight"] == 0.1
    assert recipe["loss_views"] == "all"  # train.py:573-578: MSE over every view


def test_configs_saved_before_the_recipe_keys_load_as_they_trained(tmp_path):
    saved = config_to_dict(Config())
    for key in ("prompt_dropout_per", "prior_shards", "loss_views"):
        del saved["train"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = read_config_json(tmp_path / "config.json")
    assert old.train.prompt_dropout_per == "object" and old.train.prior_shards == ""
    assert old.train.loss_views == "generated"
