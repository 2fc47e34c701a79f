"""View-Consistent Attention Control (TrAME Sec. 4.3) as a per-call switch of our processors.

TrAME runs the source branch (original views, source prompt) and the target branch (target
prompt) in one UNet call. Here the two are objects of one batch: with B = 2 objects per CFG half
the rows are ``[source, target]`` (unconditional), ``[source, target]`` (conditional), N views
each, so that object 2j + 1 is the target twin of object 2j. An ``AttentionControl`` rides on the
``MultiViewCondition`` of that call (``MultiViewUNet.forward(..., control=...)``) and the
``MultiViewAttnProcessor`` asks it, in every attention, what to change:

- ``inject_self``: in self-attention (our cross-frame attention) the target rows take the source
  rows' queries and keys, so the target keeps the source's structure (TrAME Eq. 9, early steps);
- ``replace_cross``: in cross-attention the target's attention probabilities of the tokens both
  prompts share are the source's (prompt-to-prompt's word swap, with its token alignment).

Source rows are never changed, and with both switches off (or no control) the processor computes
what it computes without one. KV propagation and KV reference (keyframes attending to all
keyframes, context views to their keyframe) are what our cross-frame attention already does
inside a batch: the TrAME loop puts all keyframes in one batch and each context with its keyframe.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import CLIPTokenizer


@dataclass(frozen=True)
class AttentionControl:
    """What the target branch borrows from the source branch in one UNet call."""

    n_views: int
    """N: views per object (rows per object)."""
    inject_self: bool = False
    """Target self-attention queries and keys := the source's."""
    replace_cross: bool = False
    """Target cross-attention probabilities of shared tokens := the source's."""
    shared_tokens: Tensor | None = None
    """(77,) bool: target tokens that the source prompt has too (``token_alignment``)."""
    source_index: Tensor | None = None
    """(77,) long: for each shared target token, its position in the source prompt."""

    def __post_init__(self) -> None:
        if self.replace_cross and (self.shared_tokens is None or self.source_index is None):
            raise ValueError(
                "replace_cross needs the token alignment (shared_tokens, source_index)"
            )

    @property
    def active(self) -> bool:
        """Whether any control is on in this call."""
        return self.inject_self or self.replace_cross

    def _pairs(self, rows: int) -> tuple[Tensor, Tensor]:
        """Row indices (source rows, their target twins) for a batch of ``rows`` rows."""
        n = self.n_views
        if rows % (2 * n):
            raise ValueError(
                f"attention control: {rows} rows are not [source, target] pairs of {n} views"
            )
        objects = torch.arange(rows // n).reshape(-1, 2)  # (pairs, 2): [source, target]
        view = torch.arange(n)
        source = (objects[:, 0, None] * n + view).flatten()
        return source, source + n

    def borrow_rows(self, x: Tensor) -> Tensor:
        """x (rows, ...) with every target row replaced by its source twin's."""
        source, target = self._pairs(x.shape[0])
        out = x.clone()
        out[target.to(x.device)] = x[source.to(x.device)]
        return out

    def cross_probabilities(self, probs: Tensor) -> Tensor:
        """Cross-attention probabilities (rows, heads, L, 77) with the target rows' shared tokens
        taken from the source rows (aligned by ``source_index``)."""
        source, target = self._pairs(probs.shape[0])
        device = probs.device
        shared = self.shared_tokens.to(device)
        columns = torch.nonzero(shared).flatten()
        out = probs.clone()
        src = probs[source.to(device)][..., self.source_index.to(device)[columns]]
        tgt = out[target.to(device)]
        tgt[..., columns] = src
        out[target.to(device)] = tgt
        return out


def token_alignment(tokenizer: CLIPTokenizer, source: str, target: str) -> tuple[Tensor, Tensor]:
    """(shared (77,) bool, source_index (77,) long): which target tokens the source prompt has,
    and where (difflib's longest matching blocks over the token ids; padding aligns with padding).
    """
    length = tokenizer.model_max_length

    def ids(text: str) -> list[int]:
        return tokenizer(text, padding="max_length", max_length=length, truncation=True).input_ids

    src, tgt = ids(source), ids(target)
    shared = torch.zeros(length, dtype=torch.bool)
    index = torch.zeros(length, dtype=torch.long)
    matcher = difflib.SequenceMatcher(a=src, b=tgt, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            shared[block.b + k] = True
            index[block.b + k] = block.a + k
    return shared, index


def changed_words(tokenizer: CLIPTokenizer, source: str, target: str) -> list[int]:
    """Positions (in the target prompt's tokens) of the words the edit changes."""
    shared, _ = token_alignment(tokenizer, source, target)
    real = len(tokenizer(target).input_ids)  # with start and end tokens
    return [i for i in range(1, real - 1) if not shared[i]]


def attend_with_control(
    query: Tensor, key: Tensor, value: Tensor, heads: int, control: AttentionControl
) -> Tensor:
    """Cross-attention (rows, L, inner) with explicit probabilities, the target's shared tokens
    replaced by the source's."""
    rows, length, inner = query.shape
    head_dim = inner // heads

    def split(x: Tensor) -> Tensor:  # (rows, L', inner) -> (rows, heads, L', head_dim)
        return x.reshape(rows, -1, heads, head_dim).transpose(1, 2)

    q, k, v = split(query), split(key), split(value)
    probs = torch.softmax((q @ k.transpose(-1, -2)) * head_dim**-0.5, dim=-1)
    probs = control.cross_probabilities(probs)
    return (probs @ v).transpose(1, 2).reshape(rows, length, inner).to(query.dtype)
