"""The streaming N-view loader: batches, cameras against known 3D points, seeds, ranks, workers,
corrupt data, URLs, torchrun, the preview picture and the throughput benchmark."""

import io
import itertools
import json
import logging
import math
import pickle
import random
import runpy
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import replace
from itertools import islice
from pathlib import Path

import pytest
import torch
from PIL import Image

from viewdiff.cameras.conventions import (
    camera_centers,
    project,
    resize_intrinsics,
    transform_points,
)
from viewdiff.cameras.orbits import orbit
from viewdiff.cameras.pose_features import intensity_stats, pose_features
from viewdiff.config import DataConfig
from viewdiff.data.shard_manifest import read_manifest
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.stream import build_loader, build_pipeline
from viewdiff.data.stream_batches import to_float_views
from viewdiff.data.stream_views import MIX_MAX_OFFSET, mixed_views, spread_views
from viewdiff.data.stream_workers import SkippedTally
from viewdiff.data.synthetic import make_synthetic_dataset, read_synthetic_objects

# 2 categories x 2 sequences x 12 frames -> 8 samples of 6 views (2 chunks per sequence), 3 shards,
# of views cropped around the object (data.crop: object; the random squares of full frames, the
# default, are tested in test_crops.py).
REPO = Path(__file__).resolve().parents[2]
OPTIONS = ShardOptions(
    image_size=64, crop="object", max_frames=8, min_frames=5, samples_per_shard=3
)


@pytest.fixture(scope="module")
def co3d_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("co3d")
    # 160x120 sources (the objects ~100 px) give 64 px views by downscaling, as CO3D's do; the
    # masks' pixel sampling then stays within a view pixel (the known-points test needs it).
    return make_synthetic_dataset(out, ("box", "composite"), 2, 12, (160, 120), seed=1, points=2000)


@pytest.fixture(scope="module")
def shards(co3d_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(co3d_root, out, OPTIONS)
    return out


def config(shards: Path | str, **changes) -> DataConfig:
    """The data config of the test shards."""
    base = DataConfig(shards=str(shards), image_size=64, n_views=4, num_workers=0, shuffle_buffer=4,
                      crop="object", caption_fallback="category")  # fmt: skip
    return replace(base, **changes)


def first_batches(data: DataConfig, count: int, **kwargs) -> list[dict]:
    """The first ``count`` batches of 2 objects of a fresh loader."""
    return list(islice(build_loader(data, batch_size=2, **kwargs), count))


def drawn(batches: list[dict]) -> list[tuple]:
    """What a stream drew: (key, frame numbers) per sample."""
    return [
        (key, tuple(numbers))
        for batch in batches
        for key, numbers in zip(batch["key"], batch["frame_numbers"].tolist(), strict=True)
    ]


def one_pass(data: DataConfig, batch_size: int = 3) -> list[dict]:
    """Every batch of one finite pass over the shards."""
    return list(build_loader(data, batch_size=batch_size, seed=0, resampled=False))


# The batch.


def test_batch_has_the_design_layout(shards, co3d_root):
    (batch,) = first_batches(config(shards), 1, seed=0)
    assert batch["images"].shape == (2, 4, 3, 64, 64) and batch["masks"].shape == (2, 4, 1, 64, 64)
    assert batch["K"].shape == (2, 4, 3, 3) and batch["w2c"].shape == (2, 4, 4, 4)
    assert batch["pose_features"].shape == (2, 4, 10)
    assert batch["intensity_stats"].shape == (2, 4, 2)
    for key in ("images", "masks", "K", "w2c", "pose_features", "intensity_stats", "similarity"):
        assert batch[key].dtype == torch.float32, key
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert batch["images"].min() < -0.5 and batch["images"].max() > 0.5  # really decoded
    assert batch["masks"].min() == 0 and batch["masks"].max() == 1
    assert torch.allclose(batch["intensity_stats"], intensity_stats(batch["images"]))
    expected = pose_features(batch["K"], batch["w2c"], (64, 64), batch["intensity_stats"])
    assert torch.allclose(batch["pose_features"], expected, atol=1e-5)
    for b, prompt in enumerate(batch["prompt"]):
        captions = json.loads((co3d_root / batch["category"][b] / "captions.json").read_text())
        assert prompt in captions[batch["sequence"][b]]
    assert len(batch["key"]) == 2 and batch["skipped"] == 0 and batch["worker"] == 0


def test_workers_send_bytes_and_the_main_process_makes_the_floats(shards):
    (sent,) = islice(build_pipeline(config(shards), batch_size=2, seed=0), 1)
    assert sent["images"].dtype == torch.uint8 and sent["masks"].dtype == torch.uint8
    (batch,) = first_batches(config(shards), 1, seed=0)
    assert torch.equal(batch["images"], sent["images"].float() / 127.5 - 1.0)
    assert torch.equal(batch["masks"], sent["masks"].float() / 255.0)
    torch.testing.assert_close(batch["intensity_stats"], intensity_stats(batch["images"]))
    images, masks = to_float_views(torch.tensor([0, 255], dtype=torch.uint8), torch.tensor([255]))
    assert images.tolist() == [-1.0, 1.0] and masks.tolist() == [1.0]


@pytest.mark.parametrize("size", [64, 32])  # 32: the 64 px shards decoded down
def test_known_object_points_project_into_every_views_mask(shards, co3d_root, size):
    # The acceptance test of the data issue: make_synthetic -> prepare_co3d -> stream.
    samples = 0
    for batch in one_pass(config(shards, n_views=6, image_size=size)):
        dilated = torch.nn.functional.max_pool2d(batch["masks"][:, :, 0], 3, 1, 1)  # 1 px slack
        for b, category in enumerate(batch["category"]):
            sequence = batch["sequence"][b]
            known = read_synthetic_objects(co3d_root, category)[sequence]
            points = [known["centre_world"][None], known["surface_keypoints_world"]]
            if known["box_corners_on_surface"]:
                points.append(known["box_corners_world"])
            world = torch.cat(points)  # (P, 3) in the sequence's world
            scene = transform_points(batch["similarity"][b].double(), world)
            # The object box is [-1, 1]^3, up to the point cloud's sampling of the surface.
            assert scene.abs().amax() <= 1.03
            K, w2c = batch["K"][b].double(), batch["w2c"][b].double()  # (6, 3, 3), (6, 4, 4)
            assert (camera_centers(w2c)[:, 2] > scene[:, 2].amin()).all()  # above the floor
            uv, depth = project(scene, K, w2c)  # (6, P, 2), (6, P)
            assert (depth > 0).all()
            pixels = uv.round().long()
            assert ((pixels >= 0) & (pixels < size)).all()
            inside = dilated[b][torch.arange(6)[:, None], pixels[..., 1], pixels[..., 0]]
            assert (inside > 0.5).all(), f"{category}/{sequence}: points outside the mask"
            samples += 1
    assert samples == 8


def test_larger_shards_are_decoded_down_with_their_intrinsics(shards):
    (full,) = first_batches(config(shards), 1, seed=0)
    (half,) = first_batches(config(shards, image_size=32), 1, seed=0)
    assert drawn([half]) == drawn([full])  # the same views, only smaller
    assert half["images"].shape == (2, 4, 3, 32, 32) and half["masks"].shape == (2, 4, 1, 32, 32)
    torch.testing.assert_close(half["K"], resize_intrinsics(full["K"], (64, 64), (32, 32)))
    expected = pose_features(half["K"], half["w2c"], (32, 32), half["intensity_stats"])
    torch.testing.assert_close(half["pose_features"], expected, atol=1e-5, rtol=0)
    # JPEG draft mode decodes at half scale: close to the full decode averaged over 2x2 pixels
    # (measured 0.028; every other pixel of the full decode, aliased, is 0.057 away).
    pooled = torch.nn.functional.avg_pool2d(full["images"].flatten(0, 1), 2)
    assert (half["images"].flatten(0, 1) - pooled).abs().mean() < 0.04
    masks = torch.nn.functional.avg_pool2d(full["masks"].flatten(0, 1), 2)
    assert (half["masks"].flatten(0, 1) - masks).abs().mean() < 0.03


def test_prompt_falls_back_to_the_category(shards, tmp_path):
    folder = Path(shutil.copytree(shards, tmp_path / "shards"))
    for entry in read_manifest(folder)["shards"]:
        rewrite_tar(folder / entry["name"], edit_meta=lambda meta: meta.update(captions=[]))
    batches = one_pass(config(folder))
    assert {p for b in batches for p in b["prompt"]} == {"a box", "a composite"}


# Choosing views.


def max_azimuth_gap(w2c: torch.Tensor) -> float:
    """Largest angle around +z between the camera centres of w2c (V, 4, 4)."""
    centres = camera_centers(w2c.double())
    azimuth = torch.sort(torch.atan2(centres[:, 1], centres[:, 0])).values
    gaps = torch.diff(torch.cat([azimuth, azimuth[:1] + 2 * math.pi]))
    return float(gaps.max())


def test_spread_views_surround_the_object():
    circle = orbit(12, elevation_deg=25.0, radius=3.0, dtype=torch.float64)  # 30 deg apart
    order = list(range(12))
    random.Random(0).shuffle(order)  # capture order unrelated to the angle
    w2c = circle[order]
    rng = random.Random(0)
    for _ in range(20):
        chosen = spread_views(w2c, 4, rng)
        assert len(set(chosen)) == 4
        assert max_azimuth_gap(w2c[chosen]) == pytest.approx(math.pi / 2)
    assert max_azimuth_gap(circle[:4]) == pytest.approx(1.5 * math.pi)  # 4 neighbours: degenerate
    random_gaps = [max_azimuth_gap(w2c[rng.sample(range(12), 4)]) for _ in range(50)]
    assert sum(random_gaps) / 50 > math.pi / 2 + 0.3


def test_loader_spread_sampling_covers_the_orbit(shards):
    for batch in one_pass(config(shards, n_views=3, view_sampling="spread")):
        for w2c in batch["w2c"]:
            # 6 frames of a chunk span ~300-360 degrees: 3 of them spread leave gaps of ~120.
            assert max_azimuth_gap(w2c) < math.radians(170)


# Seeds, ranks and workers.


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_other_seed_other_batches(shards, workers):
    data = config(shards, num_workers=workers)
    first, again = first_batches(data, 4, seed=3), first_batches(data, 4, seed=3)
    assert drawn(first) == drawn(again)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(first, again, strict=True))
    assert drawn(first_batches(data, 4, seed=4)) != drawn(first)
    if workers:
        assert [batch["worker"] for batch in first] == [0, 1, 0, 1]
        by_worker = [drawn(first[w::2]) for w in range(2)]
        assert by_worker[0] != by_worker[1]  # each worker draws its own stream


def test_ranks_draw_different_streams(shards):
    data = config(shards)
    rank0 = first_batches(data, 4, seed=0, rank=0, world_size=2)
    rank1 = first_batches(data, 4, seed=0, rank=1, world_size=2)
    assert drawn(rank0) != drawn(rank1)


def test_pipeline_pickles_for_spawned_workers(shards):
    pipeline = build_pipeline(config(shards), batch_size=2, seed=0)
    assert next(iter(pickle.loads(pickle.dumps(pipeline))))["images"].shape[0] == 2


def test_finite_pass_splits_shards_between_ranks(shards):
    keys = [
        {key for batch in build_loader(config(shards), 2, 0, rank, 2, resampled=False)
         for key in batch["key"]}
        for rank in range(2)
    ]  # fmt: skip
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 8


def test_torchrun_two_ranks_get_different_data_and_finish(shards, tmp_path):
    # 3 shards for 2 ranks x 2 workers: resampled shards never leave a worker without data.
    out = tmp_path / "ranks.json"
    script = Path(__file__).with_name("torchrun_stream.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), str(shards), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and all(len(r["drawn"]) == 8 for r in ranks)
    assert ranks[0]["drawn"] != ranks[1]["drawn"]


def test_skipped_tally_sums_the_latest_count_of_each_worker():
    tally = SkippedTally()
    for worker, skipped in [(0, 0), (1, 2), (0, 1), (1, 3)]:
        tally.update({"worker": worker, "skipped": skipped})
    assert tally.total == 4


# Corrupt data and other sources.


def rewrite_tar(
    path: Path,
    edit_meta: Callable[[dict], object] | None = None,
    truncate: str | None = None,
    sample: int | None = None,
) -> None:
    """Rewrite a shard, damaging one sample (all when ``sample`` is None): its JSON edited in
    place by ``edit_meta``, its member with extension ``truncate`` cut in half."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m, _ in members))
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            key, extension = member.name.split(".", 1)
            if sample is None or key == keys[sample]:
                if extension == "json" and edit_meta is not None:
                    meta = json.loads(data)
                    edit_meta(meta)
                    data = json.dumps(meta).encode()
                if extension == truncate:
                    data = data[: len(data) // 2]
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_corrupt_data_is_skipped_counted_and_the_rest_is_intact(shards, tmp_path, caplog):
    folder = Path(shutil.copytree(shards, tmp_path / "shards"))
    keys = {}
    for entry in read_manifest(folder)["shards"]:
        with tarfile.open(folder / entry["name"]) as tar:
            keys[entry["name"]] = list(dict.fromkeys(n.split(".", 1)[0] for n in tar.getnames()))
    bad_jpeg = keys["train-000000.tar"][1]
    rewrite_tar(folder / "train-000000.tar", truncate="002.jpg", sample=1)
    bad_json = keys["train-000001.tar"][0]
    rewrite_tar(
        folder / "train-000001.tar", edit_meta=lambda meta: meta.pop("similarity"), sample=0
    )
    # Truncate the last shard inside its last sample's first member.
    with tarfile.open(folder / "train-000002.tar") as tar:
        last = [m for m in tar.getmembers() if m.name.startswith(keys["train-000002.tar"][-1])]
    with open(folder / "train-000002.tar", "r+b") as stream:
        stream.truncate(last[0].offset_data + last[0].size // 2)
    lost = keys["train-000002.tar"][-1]
    with caplog.at_level(logging.WARNING, logger="viewdiff.data.stream"):
        batches = one_pass(config(folder, n_views=6), batch_size=1)  # all views decoded
    seen = [key for batch in batches for key in batch["key"]]
    expected = {key for names in keys.values() for key in names} - {bad_jpeg, bad_json, lost}
    assert sorted(seen) == sorted(expected)  # every other sample exactly once
    assert batches[-1]["skipped"] >= 3
    warnings = [r for r in caplog.records if r.name == "viewdiff.data.stream"]
    assert len(warnings) == 1 and "skipping" in warnings[0].getMessage()


def test_bad_cameras_skip_their_sample(shards, tmp_path, caplog):
    folder = Path(shutil.copytree(shards, tmp_path / "shards"))
    first = read_manifest(folder)["shards"][0]["name"]
    with tarfile.open(folder / first) as tar:
        keys = list(dict.fromkeys(n.split(".", 1)[0] for n in tar.getnames()))

    def nan_pose(meta):
        meta["frames"][1]["w2c"][0][3] = math.nan

    def zero_focal(meta):
        meta["frames"][2]["K"][0][0] = 0.0

    rewrite_tar(folder / first, edit_meta=nan_pose, sample=0)
    rewrite_tar(folder / first, edit_meta=zero_focal, sample=1)
    with caplog.at_level(logging.WARNING, logger="viewdiff.data.stream"):
        batches = one_pass(config(folder), batch_size=1)
    seen = {key for batch in batches for key in batch["key"]}
    assert keys[0] not in seen and keys[1] not in seen and set(keys[2:]) <= seen
    assert batches[-1]["skipped"] == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "viewdiff.data.stream"]
    assert f"{first}: sample {keys[0]}: view 1: w2c has NaN or inf" in warning


def test_pipe_url_reads_the_same_samples_as_the_folder(shards):
    pattern = f"pipe:cat {shards}/train-{{000000..000002}}.tar"
    local, piped = one_pass(config(shards)), one_pass(config(pattern))
    assert drawn(local) == drawn(piped) and len(drawn(local)) == 8
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(local, piped, strict=True))


def test_categories_select_samples(shards):
    batches = one_pass(config(shards, categories=("box",)))
    assert {c for batch in batches for c in batch["category"]} == {"box"}
    assert sum(len(batch["key"]) for batch in batches) == 4
    with pytest.raises(ValueError, match="no category \\['teddybear'\\]"):
        build_loader(config(shards, categories=("teddybear",)), 2, 0)


def test_a_stream_without_the_wanted_categories_stops_with_an_error(shards, monkeypatch):
    monkeypatch.setattr("viewdiff.data.stream_views.MAX_OTHER_CATEGORY", 20)
    pattern = f"{shards}/train-{{000000..000002}}.tar"  # a URL: no manifest to check first
    with pytest.raises(ValueError, match="no sample of data.categories=\\['teddybear'\\]"):
        first_batches(config(pattern, categories=("teddybear",)), 1, seed=0)


def test_bad_data_configs_are_refused(shards):
    with pytest.raises(ValueError, match="data.n_views must be at least 1"):
        build_loader(config(shards, n_views=0), 2, 0)


def test_a_stream_whose_every_shard_fails_stops_with_an_error(tmp_path):
    missing = f"{tmp_path}/train-{{000000..000001}}.tar"
    with pytest.raises(RuntimeError, match="in a row failed"):
        first_batches(config(missing), 1, seed=0)


def test_mismatched_or_incomplete_shards_are_refused(shards, tmp_path):
    with pytest.raises(ValueError, match="shards hold 64 px views, data.image_size is 128"):
        build_loader(config(shards, image_size=128), 2, 0)
    folder = Path(shutil.copytree(shards, tmp_path / "shards"))
    manifest = read_manifest(folder)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="incomplete"):
        build_loader(config(folder), 2, 0)
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        build_loader(config(tmp_path), 2, 0)


# The command line and the benchmark.


def test_preview_batch_draws_objects_by_views(shards, tmp_path):
    preview = runpy.run_path(str(REPO / "data/preview_batch.py"))
    out = tmp_path / "batch.png"
    preview["main"](["--shards", str(shards), "--out", str(out), "--n-views", "3",
                     "--batch-size", "2", "--display-size", "96"])  # fmt: skip
    with Image.open(out) as image:
        assert image.size == (3 * 96, 2 * 96)
        assert len(image.convert("RGB").getcolors(1 << 16) or []) > 100  # photos, not blank


def test_data_throughput_benchmark_prints_a_line_per_worker_count(capsys):
    bench = runpy.run_path(str(REPO / "bench/data_throughput.py"))
    bench["main"](["--sequences", "1", "--frames", "8", "--size", "64", "--batches", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("views/s per core" in line for line in lines)  # 0, 1, 2 workers
    bench["main"](["--sequences", "1", "--frames", "8", "--size", "32", "--stored-size", "64",
                   "--batches", "2", "--workers", "0"])  # fmt: skip
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "64->32px" in line and "views/s per core" in line


def test_mix_draws_random_views_or_runs_half_the_time_each():
    """The reference's other_selection mix: a coin between N random frames and a run of frames a
    random offset 0..4 apart (co3d_dataset.py:684-704)."""
    rng, n_frames, n_views = random.Random(0), 40, 5
    runs, offsets = 0, set()
    for _ in range(2000):
        chosen = mixed_views(n_frames, n_views, rng)
        assert len(chosen) == n_views and all(0 <= i < n_frames for i in chosen)
        steps = {(b - a) % n_frames for a, b in itertools.pairwise(chosen)}
        if len(steps) == 1 and steps <= set(range(MIX_MAX_OFFSET + 1)):
            runs += 1
            offsets |= steps
        else:
            assert len(set(chosen)) == n_views  # the random branch draws distinct frames
    assert 900 < runs < 1100  # about half (a random draw is a run by chance ~1e-5 of the time)
    assert offsets == {0, 1, 2, 3, 4}
