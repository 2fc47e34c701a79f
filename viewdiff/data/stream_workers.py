"""What a DataLoader worker of the stream knows of itself: its id, its seeds, and its count of
the samples it skipped (``SkippedTally`` sums the counts of all workers in the training loop).

Seeds come from (seed, rank, worker, stage), hashed, so that two ranks or two workers draw
different streams and the same (seed, rank, num_workers) gives the same batches again.
"""

from __future__ import annotations

import hashlib
import logging

import torch

# The stream's one logger: its warnings are filtered (and tested) under this name.
logger = logging.getLogger("viewdiff.data.stream")


def worker_id() -> int:
    """This DataLoader worker's id (0 in the main process)."""
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id


def stream_seed(seed: int, rank: int, stage: str) -> int:
    """A 63-bit seed for one stage of one worker of one rank (stable across processes)."""
    text = f"{seed}/{rank}/{worker_id()}/{stage}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


class SkipCounter:
    """Counts what this process skipped for errors; warns once; stops a stream that only fails."""

    def __init__(self, max_consecutive: int = 200) -> None:
        self.count = 0
        self.consecutive = 0
        self.max_consecutive = max_consecutive

    def handle(self, error: Exception) -> bool:
        """webdataset handler: count the error and go on (True)."""
        self.count += 1
        self.consecutive += 1
        if self.count == 1:
            logger.warning(
                "skipping a corrupt sample or shard (further ones are counted silently, "
                "see the batches' 'skipped'): %s",
                error,
            )
        if self.consecutive > self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} samples or shards in a row failed; the last: {error}"
            ) from error
        return True

    def succeeded(self) -> None:
        """A good sample went through."""
        self.consecutive = 0


class SkippedTally:
    """Skipped samples of all of a loader's workers, from the counts its batches carry."""

    def __init__(self) -> None:
        self.latest: dict[int, int] = {}

    def update(self, batch: dict) -> int:
        """Record a batch's count; returns the total over workers so far."""
        self.latest[int(batch["worker"])] = int(batch["skipped"])
        return self.total

    @property
    def total(self) -> int:
        """Sum over workers of their latest cumulative counts."""
        return sum(self.latest.values())
