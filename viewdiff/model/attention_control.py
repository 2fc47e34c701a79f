"""What the multi-view attention processor asks of whoever controls its attention.

The model does not know who controls it: TrAME's view-consistent attention control
(``viewdiff.trame.attention_control.AttentionControl``) is one implementation; any object with
these members, passed as ``control=`` to ``MultiViewUNet.forward``, is another.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class AttentionControl(Protocol):
    """Per-call attention control of a dual-branch (source, target) UNet call."""

    @property
    def inject_self(self) -> bool:
        """Target self-attention queries and keys := the source's."""
        ...

    @property
    def propagate_first(self) -> bool:
        """Self-attention keys and values of every view := those of its object's first view."""
        ...

    @property
    def explicit_cross(self) -> bool:
        """Cross-attention is computed by ``cross_attend`` (it reads or edits probabilities)."""
        ...

    def borrow_rows(self, x: Tensor) -> Tensor:
        """``x`` (rows, ...) with every target row replaced by its source twin's."""
        ...

    def from_first_view(self, x: Tensor) -> Tensor:
        """``x`` (rows, ...) with every row replaced by its object's first row."""
        ...

    def cross_attend(self, query: Tensor, key: Tensor, value: Tensor, heads: int) -> Tensor:
        """Cross-attention output (rows, L, heads * d) of ``query``, ``key``, ``value``."""
        ...
