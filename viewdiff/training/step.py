"""One optimiser step: G micro-batches forward and backward, clip, update (or skip), EMA.

Randomness: every micro-batch draws its prompt dropout, VAE posterior sample, timesteps, clean
views and noise from its own CPU generator seeded by (train.seed, rank, step, micro-batch), so a
step's draws depend on nothing that came before it and a resumed run repeats them exactly.

Prior preservation (DreamBooth, as the reference; ``train.prior_shards``): every micro-batch also
gets a batch of the base model's own images, one view per object, whose diffusion loss is added
with weight ``train.prior_weight``. That batch has no image conditions and lifts its one view;
at N=1 cross-frame attention sees only the view itself. Its draws come from a generator of its
own, so the multi-view batch draws the same with or without it. It runs forward and backward
before the multi-view batch, under ``no_sync``: its gradients join the accumulated ones and are
all-reduced once, with the last micro-batch's (two forwards before one backward would break
DistributedDataParallel).

Non-finite losses: the loss is averaged over micro-batches and ranks, so every rank sees the
same value and takes the same decision at the same step. A NaN/inf loss (or, except under fp16
whose GradScaler handles overflows itself, a non-finite gradient norm) either stops the run
(``NonFiniteLossError``; nothing is saved, the last checkpoint stays the last good one) or skips
the update (``train.nan_policy=skip``): gradients dropped, the step counted as done.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from viewdiff.config import TrainConfig
from viewdiff.diffusion import detached_clean_targets, diffusion_sample, generated_views_mse
from viewdiff.training.base_pipeline import BasePipeline
from viewdiff.training.batches import model_inputs
from viewdiff.training.ema import EMA
from viewdiff.training.optim import set_learning_rates, trained_parameters


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss under train.nan_policy=stop."""


@dataclass
class TrainingParts:
    """What a training step works with (model and optimizer as accelerate prepared them)."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    base: BasePipeline
    alphas_cumprod: Tensor
    prediction_type: str
    train: TrainConfig
    ema: EMA | None = None


@dataclass(frozen=True)
class StepOutcome:
    """What one optimiser step did."""

    loss: float
    """Loss averaged over micro-batches and ranks."""
    grad_norm: float
    """Global gradient norm before clipping."""
    skipped: bool
    """True when the update was skipped for a non-finite loss."""
    views: int
    """Views trained on by this rank (B x N x G)."""
    prior_loss: float | None = None
    """Prior preservation loss (unweighted) averaged over micro-batches and ranks, if any."""


def step_generator(
    seed: int, rank: int, step: int, micro_batch: int, stream: str = "step"
) -> torch.Generator:
    """The CPU generator of one micro-batch of one step of one rank (``stream``: "step" for the
    multi-view batch, "prior" for the prior preservation batch)."""
    text = f"viewdiff-{stream}/{seed}/{rank}/{step}/{micro_batch}".encode()
    return torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(text).digest()[:8], "little")
    )


def lifted_views(rows: int, n_views: int, novel_views: int, device: torch.device) -> Tensor | None:
    """Which views (B*N,) the projection layers lift: all but each object's last
    ``novel_views`` (None: all)."""
    if not novel_views:
        return None
    return torch.arange(rows, device=device) % n_views < n_views - novel_views


def micro_batch_loss(
    parts: TrainingParts, batch: dict, generator: torch.Generator, prior: bool = False
) -> Tensor:
    """The diffusion loss of one micro-batch (ViewDiff Sec. 3.3, see ``viewdiff.diffusion``),
    averaged over the views ``train.loss_views`` names; a ``prior`` batch has no image
    conditions and lifts every view."""
    train = parts.train
    novel_views = 0 if prior else train.novel_views
    inputs = model_inputs(
        batch,
        parts.base,
        parts.accelerator.device,
        train.prompt_dropout,
        generator,
        train.prompt_dropout_per,
    )
    sample = diffusion_sample(
        inputs.latents,
        inputs.n_views,
        parts.alphas_cumprod,
        parts.prediction_type,
        0.0 if prior else train.image_condition_prob,
        train.image_condition_views,
        generator,
    )
    prediction = parts.model(
        sample.noisy_latents,
        sample.timesteps,
        inputs.encoder_hidden_states,
        inputs.K,
        inputs.w2c,
        inputs.pose_features,
        n_views=inputs.n_views,
        image_size_hw=inputs.image_size_hw,
        unprojected_views=lifted_views(
            len(sample.timesteps), inputs.n_views, novel_views, sample.timesteps.device
        ),
        noise_generator=generator,  # density noise, drawn last (model.density_noise > 0 only)
    )  # (B*N, 4, h, w)
    if train.loss_views == "all":  # the reference: clean views count, with zero error
        target = detached_clean_targets(prediction, sample.target, sample.generated)
        return generated_views_mse(prediction, target, torch.ones_like(sample.generated))
    return generated_views_mse(prediction, sample.target, sample.generated)


def prior_backward(parts: TrainingParts, batch: dict, step: int, micro_batch: int) -> Tensor:
    """Forward and backward of one prior preservation batch (weighted, no gradient sync); its
    unweighted loss."""
    accelerator, train = parts.accelerator, parts.train
    rank = accelerator.process_index
    generator = step_generator(train.seed, rank, step, micro_batch, stream="prior")
    with accelerator.no_sync(parts.model):
        loss = micro_batch_loss(parts, batch, generator, prior=True)
        accelerator.backward(train.prior_weight * loss)  # accelerate scales it by 1/G too
    return loss.detach()


def train_step(
    parts: TrainingParts, batches: list[dict], step: int, prior_batches: list[dict] | None = None
) -> StepOutcome:
    """Accumulate the micro-batches' gradients (and the prior batches', when given), then update
    once (all ranks in lockstep)."""
    accelerator, optimizer, train = parts.accelerator, parts.optimizer, parts.train
    set_learning_rates(optimizer, step, train)
    losses, prior_losses = [], []
    for micro_batch, batch in enumerate(batches):
        if prior_batches is not None:
            prior_losses.append(
                prior_backward(parts, prior_batches[micro_batch], step, micro_batch)
            )
        generator = step_generator(train.seed, accelerator.process_index, step, micro_batch)
        # accelerate scales the loss by 1/G and synchronises gradients on the last micro-batch.
        with accelerator.accumulate(parts.model):
            loss = micro_batch_loss(parts, batch, generator)
            accelerator.backward(loss)
        losses.append(loss.detach())
    mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    prior_loss = None
    if prior_losses:
        prior_loss = accelerator.reduce(torch.stack(prior_losses).mean(), reduction="mean").item()
    max_norm = train.max_grad_norm if train.max_grad_norm > 0 else math.inf
    grad_norm = float(accelerator.clip_grad_norm_(trained_parameters(optimizer), max_norm))
    views = sum(batch["images"].shape[0] * batch["images"].shape[1] for batch in batches)
    finite_prior = prior_loss is None or math.isfinite(prior_loss)
    finite = (math.isfinite(mean_loss) and finite_prior
              and (math.isfinite(grad_norm) or accelerator.mixed_precision == "fp16"))  # fmt: skip
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        if train.nan_policy == "stop":
            if not math.isfinite(mean_loss):
                what = f"non-finite loss {mean_loss}"
            elif not finite_prior:
                what = f"non-finite prior preservation loss {prior_loss}"
            else:
                what = f"non-finite gradient norm {grad_norm} (loss {mean_loss:.4g})"
            raise NonFiniteLossError(f"step {step + 1}: {what}; stopping (train.nan_policy=stop)")
        return StepOutcome(mean_loss, grad_norm, skipped=True, views=views, prior_loss=prior_loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if parts.ema is not None:
        parts.ema.update()
    return StepOutcome(mean_loss, grad_norm, skipped=False, views=views, prior_loss=prior_loss)
