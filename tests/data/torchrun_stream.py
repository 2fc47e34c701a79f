"""Run by test_stream.py under torchrun (2 ranks, gloo, CPU): each rank streams a few batches.

    python -m torch.distributed.run --nproc_per_node 2 tests/data/torchrun_stream.py SHARDS OUT

Rank 0 writes OUT (JSON): per rank, the (key, frame numbers) of every sample it drew, gathered
over gloo, so that the test can check the ranks' streams differ and that no rank hung.
"""

import json
import os
import sys

import torch.distributed as dist

from viewdiff.config import DataConfig
from viewdiff.data.stream import build_loader


def main(shards: str, out: str) -> None:
    """Stream 4 batches per rank with 2 workers each; gather what each rank drew."""
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    data = DataConfig(shards=shards, image_size=64, n_views=3, num_workers=2, shuffle_buffer=4,
                      crop="object")  # fmt: skip
    loader = build_loader(data, batch_size=2, seed=0, rank=rank, world_size=world_size)
    drawn = []
    for step, batch in enumerate(loader):
        drawn += [
            [key, numbers]
            for key, numbers in zip(batch["key"], batch["frame_numbers"].tolist(), strict=True)
        ]
        if step == 3:
            break
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {"rank": rank, "pid": os.getpid(), "drawn": drawn})
    if rank == 0:
        with open(out, "w") as stream:
            json.dump(gathered, stream)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
