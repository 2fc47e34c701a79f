"""train.loss_views: the reference's MSE over all N views (the targets of the views given clean
set to the detached prediction, train.py:573-578) or over the generated views only."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import train
import viewdiff.training.step as step
from viewdiff.config import TrainConfig
from viewdiff.diffusion import DiffusionSample, generated_views_mse

GENERATED = torch.tensor([False, True, False, True])  # one object x 4 views, 0 and 2 clean
SHAPE = (4, 4, 2, 2)  # (B*N, 4, h, w)


class FixedPrediction(nn.Module):
    """A stand-in UNet whose prediction is a parameter: the loss's gradient lands on it."""

    def __init__(self, prediction: Tensor) -> None:
        super().__init__()
        self.prediction = nn.Parameter(prediction.clone())

    def forward(self, *args, **kwargs) -> Tensor:
        return self.prediction


def micro_batch_loss(monkeypatch, loss_views: str, prediction: Tensor, target: Tensor):
    """step.micro_batch_loss on a hand-built sample (fixed prediction, target and clean views):
    the loss and its gradient on the prediction."""
    inputs = SimpleNamespace(
        latents=torch.zeros(SHAPE),
        n_views=4,
        encoder_hidden_states=None,
        K=None,
        w2c=None,
        pose_features=None,
        image_size_hw=(16, 16),
    )
    timesteps = torch.where(GENERATED, 500, 0)
    sample = DiffusionSample(torch.zeros(SHAPE), timesteps, target, GENERATED)
    monkeypatch.setattr(step, "model_inputs", lambda *args: inputs)
    monkeypatch.setattr(step, "diffusion_sample", lambda *args: sample)
    model = FixedPrediction(prediction)
    parts = step.TrainingParts(
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        model=model,
        optimizer=None,
        base=None,
        alphas_cumprod=torch.ones(1000),
        prediction_type="epsilon",
        train=TrainConfig(loss_views=loss_views, novel_views=0),
    )
    loss = step.micro_batch_loss(parts, {}, torch.Generator())
    loss.backward()
    return loss.detach(), model.prediction.grad


def test_all_views_is_the_reference_mse_and_clean_views_get_no_gradient(monkeypatch):
    prediction = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    loss, gradient = micro_batch_loss(monkeypatch, "all", prediction, target)
    # The reference, written out: clean targets := detached prediction, mean over every element.
    predicted = prediction.clone().requires_grad_(True)
    reference_target = target.clone()
    reference_target[~GENERATED] = predicted[~GENERATED].detach().clone()
    reference = F.mse_loss(predicted.float(), reference_target.float(), reduction="none").mean()
    reference.backward()
    torch.testing.assert_close(loss, reference.detach())
    torch.testing.assert_close(gradient, predicted.grad)
    assert (gradient[~GENERATED] == 0).all() and (gradient[GENERATED] != 0).all()


def test_all_views_is_generated_scaled_by_generated_over_n(monkeypatch):
    prediction = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    target = prediction - 2.0  # every element of every view errs by 2: a squared error of 4
    all_views, all_gradient = micro_batch_loss(monkeypatch, "all", prediction, target)
    generated, generated_gradient = micro_batch_loss(monkeypatch, "generated", prediction, target)
    assert generated.item() == pytest.approx(4.0) and all_views.item() == pytest.approx(4.0 * 2 / 4)
    torch.testing.assert_close(all_gradient, generated_gradient * 2 / 4)


def test_generated_views_is_the_loss_of_before_the_key(monkeypatch):
    prediction = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    loss, gradient = micro_batch_loss(monkeypatch, "generated", prediction, target)
    predicted = prediction.clone().requires_grad_(True)
    before = generated_views_mse(predicted, target, GENERATED)  # what step.py called before
    before.backward()
    assert torch.equal(loss, before.detach()) and torch.equal(gradient, predicted.grad)


def test_training_over_all_views_runs_with_the_clean_views_counted(run_args, tmp_path, monkeypatch):
    losses: dict[str, list[float]] = {"all": [], "generated": []}
    loss = step.micro_batch_loss
    for views, values in losses.items():

        def spy_loss(parts, batch, generator, prior=False, values=values):
            value = loss(parts, batch, generator, prior)
            values.append(value.item())
            return value

        monkeypatch.setattr(step, "micro_batch_loss", spy_loss)
        # Of the 2 views, the first is always given clean: it counts in 'all' with zero error.
        argv = run_args(
            tmp_path / views,
            "train.max_steps=2",
            f"train.loss_views={views}",
            "train.image_condition_prob=1.0",
            "train.image_condition_views=1",
        )
        assert train.main(argv) == 0
    assert len(losses["all"]) == 2 and all(math.isfinite(value) for value in losses["all"])
    # The same draws and weights at step 1: the mean over 2 views of which 1 is generated.
    assert losses["all"][0] == pytest.approx(losses["generated"][0] / 2, rel=1e-6)
