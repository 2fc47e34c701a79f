"""The batches of every optimiser step, reproducible from a checkpoint: data segments.

The run is cut into segments of ``segment_steps`` steps (``train.checkpoint_every`` when the
run starts; recorded in every checkpoint). Segment k's batches, those of steps
[k * S, (k + 1) * S), come from a loader (``viewdiff.data.stream.build_loader``) built afresh
with the seed ``segment_seed(train.seed, k)``, so they depend only on (seed, k, rank, world size,
workers), not on what came before. Resuming at step s opens segment s // S and skips the
(s mod S) x G batches its steps already used (G: micro-batches per step); at a periodic
checkpoint s mod S = 0 and nothing is skipped, after a stop request at any step at most S x G
batches are. A checkpoint therefore only needs the step to know the data position.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

from tqdm import tqdm

from viewdiff.config import DataConfig
from viewdiff.data.stream import build_loader
from viewdiff.data.stream_workers import SkippedTally


def segment_seed(seed: int, segment: int) -> int:
    """The loader seed of data segment ``segment`` (63 bits, stable across processes)."""
    digest = hashlib.sha256(f"viewdiff-data/{seed}/{segment}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prior_seed(seed: int) -> int:
    """The seed of the prior preservation batches' segments (their own stream, 63 bits)."""
    digest = hashlib.sha256(f"viewdiff-prior-data/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SegmentedBatches:
    """One rank's micro-batches per optimiser step, from a loader reseeded every segment."""

    def __init__(
        self,
        data: DataConfig,
        batch_size: int,
        micro_batches: int,
        segment_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        show_progress: bool = False,
    ) -> None:
        if segment_steps < 1 or micro_batches < 1:
            raise ValueError("segment_steps and micro_batches must be at least 1")
        self.data, self.batch_size, self.micro_batches = data, batch_size, micro_batches
        self.segment_steps, self.seed = segment_steps, seed
        self.rank, self.world_size, self.show_progress = rank, world_size, show_progress
        self.segment: int | None = None
        self.next_step: int | None = None
        self._iterator: Iterator[dict] | None = None
        self._tally = SkippedTally()
        self._tally_offset = 0  # skips of fast-forwarded batches, counted before the restart
        self._skipped_closed = 0  # skips of segments already finished
        self.wait_seconds = 0.0  # time spent waiting for batches (reset by the caller)
        self.last_samples: list = []  # [sample key, frame numbers] of the last step's batches

    def step_batches(self, step: int) -> list[dict]:
        """The G micro-batches of ``step`` (steps must come in order after the first)."""
        segment = step // self.segment_steps
        iterator = self._iterator
        if iterator is None or segment != self.segment or step != self.next_step:
            iterator = self._open(segment, step)  # also after close(): reopened where it was
        start = time.perf_counter()
        batches = [next(iterator) for _ in range(self.micro_batches)]
        self.wait_seconds += time.perf_counter() - start
        for batch in batches:
            self._tally.update(batch)
        self.last_samples = [
            [key, numbers]
            for batch in batches
            for key, numbers in zip(batch["key"], batch["frame_numbers"].tolist(), strict=True)
        ]
        self.next_step = step + 1
        return batches

    @property
    def skipped(self) -> int:
        """Corrupt samples this rank's loaders skipped for the steps served so far."""
        return self._skipped_closed + self._tally.total - self._tally_offset

    def _open(self, segment: int, step: int) -> Iterator[dict]:
        """Start segment ``segment``'s loader and skip the batches of its steps before ``step``;
        returns its iterator (also ``self._iterator``)."""
        self.close()
        loader = build_loader(
            self.data,
            self.batch_size,
            seed=segment_seed(self.seed, segment),
            rank=self.rank,
            world_size=self.world_size,
        )
        iterator = self._iterator = iter(loader)
        self._tally = SkippedTally()
        done = (step - segment * self.segment_steps) * self.micro_batches
        skipping = range(done)
        if done and self.show_progress:
            skipping = tqdm(skipping, desc=f"fast-forward data segment {segment}", unit="batch")
        for _ in skipping:
            self._tally.update(next(iterator))
        self._tally_offset = self._tally.total
        self.segment = segment
        return iterator

    def close(self) -> None:
        """Stop the current loader (its workers), keeping its skipped count."""
        if self._iterator is not None:
            self._skipped_closed += self._tally.total - self._tally_offset
            self._tally, self._tally_offset = SkippedTally(), 0
            self._iterator = None
