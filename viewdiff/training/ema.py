"""Exponential moving average of the trained weights (train.use_ema), used for the export.

A thin wrapper around diffusers' ``EMAModel`` with ``use_ema_warmup=False`` (its
``(1 + step) / (10 + step)`` cap, not the power-law warm-up) and ``min_decay`` 0. After the n-th
optimiser step (1-based): ``shadow <- d_n shadow + (1 - d_n) param`` with ``d_1 = 0`` (the first
update copies the parameters) and ``d_n = min(ema_decay, n / (9 + n))`` after it, so that the
average is not dominated by the initial weights in short runs.

What the wrapper adds: shadows kept in float32 and named like the parameters, a state that is a
flat safetensors mapping (``shadow.<name>`` and ``updates``: the format of our checkpoints since
before the wrapper, so that old ``ema.safetensors`` files load), and ``swapped_in``.

Before the wrapper our own average used ``d_1 = 0.1`` (it kept a tenth of the initial weights);
every later decay is the same. After 50 updates the two differ by at most 3e-8 on float32
weights (tests/training/test_ema.py); a checkpoint written by the old class resumes with the
same decays as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel
from torch import Tensor, nn


class EMA:
    """Shadow copies (float32, on the parameters' device) of named parameters."""

    def __init__(self, named_parameters: list[tuple[str, nn.Parameter]], decay: float) -> None:
        self.parameters = dict(named_parameters)
        self.decay = decay
        self.average = EMAModel(
            [p.detach().float() for p in self.parameters.values()],  # EMAModel clones them
            decay=decay,
            min_decay=0.0,
            update_after_step=0,
            use_ema_warmup=False,
        )

    @property
    def updates(self) -> int:
        """Updates done so far (EMAModel's ``optimization_step``)."""
        return self.average.optimization_step

    @property
    def shadow(self) -> dict[str, Tensor]:
        """The averages by parameter name (EMAModel's ``shadow_params``, not copies)."""
        return dict(zip(self.parameters, self.average.shadow_params, strict=True))

    def current_decay(self) -> float:
        """d_n of the next update."""
        return self.average.get_decay(self.updates + 1)

    @torch.no_grad()
    def update(self) -> None:
        """Move every shadow towards its parameter after an optimiser step."""
        # The parameters themselves: EMAModel copies instead of averaging those without grad.
        self.average.step(self.parameters.values())

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
            saved = state[f"shadow.{name}"]
            if saved.shape != value.shape:
                raise ValueError(
                    f"{source}: shadow.{name} has shape {tuple(saved.shape)}, "
                    f"the parameter {tuple(value.shape)}"
                )
        # Onto the shadows' device and dtype: the file loads on the CPU.
        shadows = [
            state[f"shadow.{name}"].to(device=value.device, dtype=value.dtype)
            for name, value in self.shadow.items()
        ]
        self.average.load_state_dict(
            {"optimization_step": int(state["updates"]), "shadow_params": shadows}
        )

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the parameters hold the averages; afterwards their own values."""
        parameters = list(self.parameters.values())
        self.average.store(parameters)
        with torch.no_grad():
            self.average.copy_to(parameters)
        try:
            yield
        finally:
            with torch.no_grad():
                self.average.restore(parameters)
