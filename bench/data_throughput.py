"""Throughput of the streaming loader: samples/s and views/s, JPEG/PNG decoding included.

    python bench/data_throughput.py                    # synthetic shards, 256 px, N=5, B=4
    python bench/data_throughput.py --size 128 --batches 40 --workers 0 2 4
    python bench/data_throughput.py --shards data/shards/co3d --size 256    # existing shards
    python bench/data_throughput.py --stored-size 512 --workers 0   # 512 px shards read at 256

Without --shards it writes synthetic CO3D-layout objects and their shards into a temporary
folder first (not timed). Each line times ``--batches`` batches after one warm-up batch (worker
start-up and the shuffle buffer's first fill are not counted). "per core" divides by the processes
that decode: the workers, or the main process with --workers 0 (the main process only turns the
workers' byte images into floats then). Run on a quiet machine with at least workers + 1 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

from viewdiff.commands.options import nonnegative_int, positive_int
from viewdiff.config import DataConfig
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.stream import build_loader
from viewdiff.data.synthetic import make_synthetic_dataset
from viewdiff.data.synthetic_objects import CATEGORIES


def synthetic_shards(folder: Path, sequences: int, frames: int, size: int) -> Path:
    """Synthetic objects of every category, written as shards of ``size`` px views."""
    source = (size * 5 // 4, size)  # a wider source image (W, H), cropped square like CO3D's
    root = make_synthetic_dataset(folder / "co3d", CATEGORIES, sequences, frames, source, seed=0)
    options = ShardOptions(image_size=size, max_frames=frames, samples_per_shard=4)
    write_shards(root, folder / "shards", options)
    return folder / "shards"


def time_loader(data: DataConfig, batch_size: int, batches: int) -> float:
    """Seconds for ``batches`` batches after a warm-up batch."""
    stream = iter(build_loader(data, batch_size, seed=0))
    next(stream)  # warm-up: workers start, buffers fill
    start = time.perf_counter()
    for _ in islice(stream, batches):
        pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Print one line per worker count."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", help="existing shard folder or URL (default: synthetic)")
    parser.add_argument(
        "--size", type=positive_int, default=256, help="view size of the shards, px"
    )
    parser.add_argument(
        "--stored-size", type=positive_int, help="synthetic shards' view size (default --size)"
    )
    parser.add_argument("--views", type=positive_int, default=5, help="N views per sample")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="samples per batch")
    parser.add_argument("--batches", type=positive_int, default=20, help="timed batches per line")
    parser.add_argument(
        "--workers", type=nonnegative_int, nargs="+", default=[0, 1, 2], help="worker counts"
    )
    parser.add_argument(
        "--sequences", type=positive_int, default=2, help="synthetic sequences/category"
    )
    parser.add_argument(
        "--frames", type=positive_int, default=24, help="synthetic frames per sequence"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        shards = args.shards or synthetic_shards(
            Path(scratch), args.sequences, args.frames, args.stored_size or args.size
        )
        stored = None if args.shards else args.stored_size
        sizes = f"{stored}->{args.size}px" if stored else f"{args.size}px"
        for workers in args.workers:
            data = DataConfig(
                shards=str(shards),
                image_size=args.size,
                n_views=args.views,
                num_workers=workers,
                shuffle_buffer=8,
            )
            seconds = time_loader(data, args.batch_size, args.batches)
            samples = args.batches * args.batch_size
            views = samples * args.views
            print(
                f"workers={workers}  {sizes}  N={args.views}  B={args.batch_size}  "
                f"{samples / seconds:8.1f} samples/s  {views / seconds:8.1f} views/s  "
                f"{views / seconds / max(workers, 1):8.1f} views/s per core"
            )


if __name__ == "__main__":
    main()
