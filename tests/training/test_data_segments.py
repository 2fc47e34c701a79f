"""Data segments: the batches of a step depend only on (seed, segment, rank); resuming at any
step, mid segment included, serves exactly the batches an uninterrupted stream serves."""

from viewdiff.config import DataConfig
from viewdiff.training.data_segments import SegmentedBatches, segment_seed


def served(batches: SegmentedBatches, steps: range) -> list[tuple]:
    """(key, frame numbers, image checksum) of every sample of every micro-batch of the steps."""
    drawn = []
    for step in steps:
        for batch in batches.step_batches(step):
            for b, key in enumerate(batch["key"]):
                numbers = tuple(batch["frame_numbers"][b].tolist())
                drawn.append((step, key, numbers, round(batch["images"][b].sum().item(), 3)))
    return drawn


def stream(shards, **changes) -> SegmentedBatches:
    data = DataConfig(shards=str(shards), image_size=64, n_views=3, num_workers=0, shuffle_buffer=2)
    settings = {"micro_batches": 2, "segment_steps": 3, "seed": 7, **changes}
    return SegmentedBatches(data, batch_size=1, **settings)


def test_resuming_at_any_step_serves_the_uninterrupted_batches(train_shards):
    whole = served(stream(train_shards), range(0, 8))
    for start in (3, 4):  # a segment boundary, and mid segment (fast-forward)
        resumed = served(stream(train_shards), range(start, 8))
        assert resumed == whole[2 * start :]
    assert len({segment_seed(7, k) for k in range(100)}) == 100
    other_rank = served(stream(train_shards, rank=1, world_size=2), range(0, 3))
    assert other_rank != whole[:6]


def test_skipped_samples_are_counted_once_across_a_resume(train_shards, tmp_path):
    # Two good shards and a corrupt one, drawn at random: some steps skip samples.
    for path in train_shards.glob("*.tar"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "train-000002.tar").write_bytes(b"not a tar file")
    shards = tmp_path / "train-{000000..000002}.tar"
    whole = stream(shards)
    served(whole, range(0, 4))
    before_resume = whole.skipped  # what a checkpoint after step 4 records
    served(whole, range(4, 8))
    resumed = stream(shards)
    served(resumed, range(4, 8))  # fast-forwards over the skips of steps 3's segment
    assert 0 < before_resume < whole.skipped
    assert before_resume + resumed.skipped == whole.skipped
    resumed.close()
    assert before_resume + resumed.skipped == whole.skipped
