"""The paper's training recipe beyond the loss: prompt dropout per view or per object, the prior
preservation batch (DreamBooth) and its set."""

import pytest
import torch
from safetensors.torch import load_file

import train
from viewdiff.config import ModelConfig
from viewdiff.training.base_pipeline import load_base_pipeline
from viewdiff.training.batches import model_inputs


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
    clean = trained_weights(run_args, tmp_path / "clean")
    key = next(k for k in clean if "projection" in k and k.endswith("expand.2.weight"))
    for name, value in noisy[0].items():
        torch.testing.assert_close(noisy[1][name], value, rtol=0, atol=0, msg=name)
    assert (noisy[0][key] - clean[key]).abs().amax() > 0  # the noise reached the rendering
