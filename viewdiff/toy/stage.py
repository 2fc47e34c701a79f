"""One resumable, seeded stage of the toy pretraining (the VAE, then the UNet + text encoder).

A stage is its modules, an AdamW optimizer, a loss of (step, generator) and an evaluation. The
loop here runs it to ``steps``: warm-up then cosine learning rate (a pure function of the step),
gradient clipping, a tqdm bar, tensorboard scalars under ``<out>/logs/<stage>/``, and a
checkpoint every ``checkpoint_every`` steps in ``<out>/<stage>/checkpoint/`` (weights as
safetensors, the optimizer through ``torch.save`` / ``torch.load(weights_only=True)``, the step
as JSON; written under a temporary name and renamed, so a crash leaves the previous one).

Every step draws its randomness from a generator seeded by (seed, step): a resumed stage takes
exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from viewdiff.atomic_folder import atomic_folder, recover_folder
from viewdiff.weights_files import DamagedFile, folder_damage, read_safetensors

CHECKPOINT = "checkpoint"


@dataclass
class Stage:
    """What a stage trains and how it is scored."""

    name: str
    modules: dict[str, nn.Module]
    loss: Callable[[int, torch.Generator], Tensor]  # (step, generator) -> scalar loss
    evaluate: Callable[[SummaryWriter, int], dict[str, float]]  # scalars to log at a step
    steps: int
    learning_rate: float
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 250
    evaluate_every: int = 500
    log_every: int = 25
    seed: int = 0

    def parameters(self) -> list[nn.Parameter]:
        """Every trained parameter, in a fixed order."""
        return [p for module in self.modules.values() for p in module.parameters()]


def learning_rate(stage: Stage, step: int) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``min_lr_ratio`` of it."""
    if step < stage.warmup_steps:
        return stage.learning_rate * (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return stage.learning_rate * (stage.min_lr_ratio + (1.0 - stage.min_lr_ratio) * cosine)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step: a function of (seed, step) only, so resuming changes nothing."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_stage(folder: Path, stage: Stage, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Write the stage's checkpoint atomically: weights, optimizer state, step."""
    weights = {
        f"{name}.{key}": value.detach().contiguous()
        for name, module in stage.modules.items()
        for key, value in module.state_dict().items()
    }
    with atomic_folder(folder / CHECKPOINT) as staging:
        save_file(weights, staging / "weights.safetensors")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({"step": step, "seed": stage.seed}) + "\n")


def load_stage(folder: Path, stage: Stage, optimizer: torch.optim.Optimizer) -> int:
    """Restore the stage's checkpoint if there is one; the step to continue from (0: fresh)."""
    path = folder / CHECKPOINT
    recover_folder(path)  # a crash between the two renames of a save left checkpoint.old/
    if not (path / "state.json").is_file():
        return 0
    damage = folder_damage(path)
    if damage is not None:  # one folder, swapped in whole: there is no older one to fall back to
        raise DamagedFile(f"{path}: damaged checkpoint: {damage}; delete it to restart the stage")
    state = json.loads((path / "state.json").read_text())
    if state["seed"] != stage.seed:
        raise ValueError(f"{path} was written with seed {state['seed']}, this run has {stage.seed}")
    weights = read_safetensors(path / "weights.safetensors")
    for name, module in stage.modules.items():
        prefix = f"{name}."
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        )
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(state["step"])


def run_stage(stage: Stage, out: Path) -> dict[str, float]:
    """Train a stage to ``stage.steps`` (resuming its checkpoint); the last evaluation."""
    folder = out / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(
        stage.parameters(), lr=stage.learning_rate, weight_decay=stage.weight_decay
    )
    start = load_stage(folder, stage, optimizer)
    for module in stage.modules.values():
        module.train()
    writer = SummaryWriter(str(out / "logs" / stage.name))
    losses: list[float] = []
    progress = tqdm(total=stage.steps, initial=start, desc=stage.name, unit="step")
    scores: dict[str, float] = {}
    for step in range(start, stage.steps):
        lr = learning_rate(stage, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = stage.loss(step, step_generator(stage.seed, step))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage.name}: loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(stage.parameters(), stage.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        done = step + 1
        progress.update()
        if done % stage.log_every == 0:
            mean = sum(losses) / len(losses)
            writer.add_scalar(f"{stage.name}/loss", mean, done)
            writer.add_scalar(f"{stage.name}/lr", lr, done)
            writer.add_scalar(f"{stage.name}/grad_norm", float(grad_norm), done)
            progress.set_postfix(loss=f"{mean:.4f}")
            losses.clear()
        if done % stage.checkpoint_every == 0 or done == stage.steps:
            save_stage(folder, stage, optimizer, done)
        if done % stage.evaluate_every == 0 or done == stage.steps:
            scores = _evaluate(stage, writer, done)
            progress.write(f"{stage.name} step {done}: " + _format(scores))
    progress.close()
    if not scores:  # resumed at the end: nothing trained, still report
        scores = _evaluate(stage, writer, stage.steps)
    writer.close()
    return scores


def _evaluate(stage: Stage, writer: SummaryWriter, step: int) -> dict[str, float]:
    for module in stage.modules.values():
        module.eval()
    with torch.no_grad():
        scores = stage.evaluate(writer, step)
    for name, value in scores.items():
        writer.add_scalar(f"{stage.name}/{name}", value, step)
    for module in stage.modules.values():
        module.train()
    return scores


def _format(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in scores.items())
