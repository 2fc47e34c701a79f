"""Exponential moving average of the trained weights (train.use_ema), used for the export.

After every optimiser step k (0-based): ``shadow <- d_k shadow + (1 - d_k) param`` with
``d_k = min(ema_decay, (1 + k) / (10 + k))``, the warm-up of diffusers' EMAModel, so that the
average is not dominated by the initial weights in short runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA:
    """Shadow copies (float32, on the parameters' device) of named parameters."""

    def __init__(self, named_parameters: list[tuple[str, nn.Parameter]], decay: float) -> None:
        self.parameters = dict(named_parameters)
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in self.parameters.items()}

    def current_decay(self) -> float:
        """d_k of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move every shadow towards its parameter after an optimiser step."""
        weight = 1.0 - self.current_decay()
        for name, p in self.parameters.items():
            self.shadow[name].lerp_(p.detach().float(), weight)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The shadows and the update count, for a safetensors file."""
        state = {f"shadow.{name}": value.contiguous() for name, value in self.shadow.items()}
        return {**state, "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Tensor], source: str = "EMA state") -> None:
        """Restore shadows and update count written by ``state_dict``."""
        expected = {f"shadow.{name}" for name in self.shadow} | {"updates"}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"{source}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for name, value in self.shadow.items():
            value.copy_(state[f"shadow.{name}"])
        self.updates = int(state["updates"])

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the parameters hold the averages; afterwards their own values."""
        saved = {name: p.detach().clone() for name, p in self.parameters.items()}
        with torch.no_grad():
            for name, p in self.parameters.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.parameters.items():
                    p.copy_(saved[name])
