"""View-Consistent Attention Control (TrAME Sec. 4.3) as a per-call switch of our processors.

TrAME runs the source branch (original views, source prompt) and the target branch (target
prompt) in one UNet call. Here the two are objects of one batch: with B = 2 objects per CFG half
the rows are ``[source, target]`` (unconditional), ``[source, target]`` (conditional), N views
each, so that object 2j + 1 is the target twin of object 2j. An ``AttentionControl`` rides on the
``MultiViewCondition`` of that call (``MultiViewUNet.forward(..., control=...)``) and the
``MultiViewAttnProcessor`` asks it, in every attention, what to change:

- ``inject_self``: in self-attention (our cross-frame attention) the target rows take the source
  rows' queries and keys, so the target keeps the source's structure (TrAME Eq. 9, early steps);
- ``propagate_first``: in self-attention every view takes the keys and values of its object's
  first view (KV propagation: a context's views attend to their keyframe's), in both branches
  alike, so that equal prompts still give equal branches;
- ``replace_cross``: in cross-attention the target's attention probabilities of the tokens both
  prompts share are the source's (prompt-to-prompt's word swap, with its token alignment).

Apart from KV propagation, source rows are never changed, and with the switches off (or no
control) the processor computes what it computes without one. KV reference (keyframes attending
to all keyframes) is what our cross-frame attention already does inside a batch: the TrAME loop
edits all keyframes in one batch, and each context in a batch led by its keyframe.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import CLIPTokenizer


@dataclass
class AttentionRecord:
    """Cross-attention maps of chosen words, collected over the layers of calls (the edit
    region's evidence): per call and layer, the conditional source rows' probabilities of
    ``source_tokens`` plus the target rows' of ``target_tokens``, summed over tokens and heads."""

    source_tokens: list[int]
    target_tokens: list[int]
    latent_hw: tuple[int, int]
    """(h, w) of the latents: each layer's map is resized to it."""
    maps: list[Tensor] = field(default_factory=list)  # each (N, h, w)

    def add(self, probs: Tensor, source: Tensor, target: Tensor) -> None:
        """Record one layer's probabilities (rows, heads, L, 77); source/target: the rows of the
        last (conditional) pair."""
        mean = probs.float().mean(1)  # (rows, L, 77)
        words = mean[source][..., self.source_tokens].sum(-1)
        words = words + mean[target][..., self.target_tokens].sum(-1)  # (N, L)
        h, w = self.latent_hw
        scale = math.sqrt(h * w / words.shape[1])
        layer = words.reshape(-1, 1, round(h / scale), round(w / scale))
        resized = torch.nn.functional.interpolate(layer, size=(h, w), mode="bilinear")
        self.maps.append(resized[:, 0].cpu())

    def mean_map(self) -> Tensor:
        """The recorded maps averaged over layers and calls (N, h, w)."""
        if not self.maps:
            raise ValueError("no cross-attention was recorded")
        return torch.stack(self.maps).mean(0)


@dataclass(frozen=True)
class AttentionControl:
    """What the target branch borrows from the source branch in one UNet call."""

    n_views: int
    """N: views per object (rows per object)."""
    inject_self: bool = False
    """Target self-attention queries and keys := the source's."""
    replace_cross: bool = False
    """Target cross-attention probabilities of shared tokens := the source's."""
    propagate_first: bool = False
    """Self-attention keys and values of every view := those of its object's first view, in both
    branches (TrAME's KV propagation from a context's keyframe)."""
    shared_tokens: Tensor | None = None
    """(77,) bool: target tokens that the source prompt has too (``token_alignment``)."""
    source_index: Tensor | None = None
    """(77,) long: for each shared target token, its position in the source prompt."""
    record: AttentionRecord | None = None
    """Collects the cross-attention maps of chosen words (the edit region)."""

    def __post_init__(self) -> None:
        if self.replace_cross and (self.shared_tokens is None or self.source_index is None):
            raise ValueError(
                "replace_cross needs the token alignment (shared_tokens, source_index)"
            )

    @property
    def active(self) -> bool:
        """Whether any control is on in this call."""
        switches = (self.inject_self, self.replace_cross, self.propagate_first)
        return any(switches) or self.record is not None

    @property
    def explicit_cross(self) -> bool:
        """Whether cross-attention needs its probabilities (to replace or record them)."""
        return self.replace_cross or self.record is not None

    def branch_rows(self, rows: int) -> tuple[Tensor, Tensor]:
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
        source, target = self.branch_rows(x.shape[0])
        out = x.clone()
        out[target.to(x.device)] = x[source.to(x.device)]
        return out

    def from_first_view(self, x: Tensor) -> Tensor:
        """x (rows, ...) with every row replaced by its object's first row (both branches)."""
        rows = torch.arange(x.shape[0], device=x.device)
        return x[(rows // self.n_views) * self.n_views]

    def cross_attend(self, query: Tensor, key: Tensor, value: Tensor, heads: int) -> Tensor:
        """Cross-attention (rows, L, inner) under this control (``attend_with_control``)."""
        return attend_with_control(query, key, value, heads, self)

    def cross_probabilities(self, probs: Tensor) -> Tensor:
        """Cross-attention probabilities (rows, heads, L, 77) with the target rows' shared tokens
        taken from the source rows (aligned by ``source_index``)."""
        if self.shared_tokens is None or self.source_index is None:
            raise ValueError("replace_cross needs shared_tokens and source_index")
        source, target = self.branch_rows(probs.shape[0])
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


def word_positions(tokenizer: CLIPTokenizer, prompt: str, words: list[str]) -> list[int]:
    """Token positions of ``words`` in ``prompt`` (each word's tokens, wherever they occur)."""
    ids = tokenizer(prompt).input_ids
    positions: list[int] = []
    for word in words:
        pieces = tokenizer(word).input_ids[1:-1]  # without the start and end tokens
        for start in range(1, len(ids) - len(pieces)):
            if pieces and ids[start : start + len(pieces)] == pieces:
                positions += range(start, start + len(pieces))
    return sorted(set(positions))


def attend_with_control(
    query: Tensor, key: Tensor, value: Tensor, heads: int, control: AttentionControl
) -> Tensor:
    """Cross-attention (rows, L, inner) with explicit probabilities: the target's shared tokens
    replaced by the source's (``replace_cross``), the chosen words' maps recorded (``record``)."""
    rows, length, inner = query.shape
    head_dim = inner // heads

    def split(x: Tensor) -> Tensor:  # (rows, L', inner) -> (rows, heads, L', head_dim)
        return x.reshape(rows, -1, heads, head_dim).transpose(1, 2)

    q, k, v = split(query), split(key), split(value)
    probs = torch.softmax((q @ k.transpose(-1, -2)) * head_dim**-0.5, dim=-1)
    if control.replace_cross:
        probs = control.cross_probabilities(probs)
    if control.record is not None:
        source, target = control.branch_rows(rows)
        n = control.n_views
        control.record.add(probs, source[-n:].to(probs.device), target[-n:].to(probs.device))
    return (probs @ v).transpose(1, 2).reshape(rows, length, inner).to(query.dtype)
