"""Shards from CO3D-layout data: crops, normalisation, chunks, manifest counts, re-runs, workers."""

import hashlib
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.conventions import camera_centers, project, transform_points
from viewdiff.data.co3d import read_category
from viewdiff.data.co3d_files import read_point_cloud
from viewdiff.data.shard_manifest import SKIP_REASONS, read_manifest
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shard_samples import crop_square, object_crop_box
from viewdiff.data.shards import write_shards
from viewdiff.data.synthetic import make_synthetic_dataset

# 2 categories x 2 sequences x 12 frames; max 8 frames per sample -> 2 chunks of 6 per sequence,
# cropped around the object (full-frame shards: test_crops.py).
REPO = Path(__file__).resolve().parents[2]
OPTIONS = ShardOptions(
    image_size=64, crop="object", max_frames=8, min_frames=5, samples_per_shard=3
)


@pytest.fixture(scope="module")
def co3d_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("co3d")
    return make_synthetic_dataset(out, ("box", "can"), 2, 12, (96, 72), seed=0, points=400)


@pytest.fixture(scope="module")
def shards(co3d_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(co3d_root, out, OPTIONS)
    return out


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of a shard, grouped the way webdataset groups it."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def all_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard in a folder's manifest."""
    samples = {}
    for entry in read_manifest(folder)["shards"]:
        samples.update(read_tar(folder / entry["name"]))
    return samples


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every shard file of a folder."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.tar")}


# Cropping.


def test_crop_box_is_shifted_inside_the_image_when_it_fits():
    mask = np.zeros((40, 60), dtype=np.float32)
    mask[0:10, 52:60] = 1.0  # a 10x8 object in the top-right corner
    left, top, side = object_crop_box(mask, margin=0.1)
    assert side == 12  # ceil(10 * 1.2)
    assert (left, top) == (60 - 12, 0)  # centred it would be (50, -1): shifted in, no padding


def test_crop_box_larger_than_the_image_stays_centred_and_is_padded():
    mask = np.zeros((20, 50), dtype=np.float32)
    mask[1:19, 20:30] = 1.0  # 18 tall: with the margin, taller than the image
    left, top, side = object_crop_box(mask, margin=0.25)
    assert side == 27 and top < 0 and top + side > 20  # reaches past both borders
    assert abs((left + side / 2) - 25) <= 0.5  # centred on the object horizontally
    image = np.arange(20 * 50 * 3, dtype=np.uint8).reshape(20, 50, 3)
    crop = crop_square(image, left, top, side, "edge")
    assert crop.shape == (side, side, 3)
    assert np.array_equal(crop[-top], image[0, left : left + side])  # row 0 lands at -top
    assert np.array_equal(crop[0], image[0, left : left + side])  # padding repeats the border
    cropped_mask = crop_square(mask, left, top, side, "constant")
    assert cropped_mask[0].sum() == 0 and cropped_mask.sum() == mask.sum()  # padded with zeros


def test_an_empty_mask_has_no_crop():
    with pytest.raises(ValueError, match="empty"):
        object_crop_box(np.zeros((8, 8), dtype=np.float32), 0.1)


# What the shards hold.


def test_manifest_counts_match_the_tar_contents(shards):
    manifest = read_manifest(shards)
    assert manifest["complete"] and manifest["image_size"] == 64
    assert manifest["categories"] == ["box", "can"]
    assert [entry["name"] for entry in manifest["shards"]] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    for entry in manifest["shards"]:
        samples = read_tar(shards / entry["name"])
        assert entry["samples"] == len(samples)
        assert entry["frames"] == sum(
            name.endswith(".jpg") for sample in samples.values() for name in sample
        )
        assert set(entry["categories"]) == {
            json.loads(s["json"])["category"] for s in samples.values()
        }
    assert manifest["totals"] == {"shards": 3, "samples": 8, "frames": 48}
    assert manifest["skipped"] == dict.fromkeys(SKIP_REASONS, 0)
    assert not list(shards.glob(".*partial"))


def test_chunks_split_a_sequence_into_orbits_of_every_other_frame(shards):
    by_sequence: dict[str, list[list[int]]] = {}
    for sample in all_samples(shards).values():
        meta = json.loads(sample["json"])
        assert meta["num_chunks"] == 2
        numbers = [frame["frame_number"] for frame in meta["frames"]]
        assert numbers == list(range(meta["chunk"], 12, 2))  # spread over the whole capture
        by_sequence.setdefault(meta["sequence"], []).append(numbers)
        for index in range(len(numbers)):
            image = Image.open(io.BytesIO(sample[f"{index:03d}.jpg"]))
            mask = Image.open(io.BytesIO(sample[f"{index:03d}.mask.png"]))
            assert image.size == mask.size == (64, 64) and image.mode == "RGB"
    assert len(by_sequence) == 4
    assert all(sorted(sum(chunks, [])) == list(range(12)) for chunks in by_sequence.values())


def test_cameras_are_stored_in_the_normalised_scene(shards, co3d_root):
    for sample in all_samples(shards).values():
        meta = json.loads(sample["json"])
        (sequence,) = read_category(co3d_root, meta["category"], sequences=[meta["sequence"]])[0]
        similarity = torch.tensor(meta["similarity"], dtype=torch.float64)
        points = transform_points(similarity, read_point_cloud(sequence.point_cloud_path))
        # The point cloud's box is centred and its longest side is 2: [-1, 1]^3.
        assert points.abs().amax() == pytest.approx(1.0, abs=1e-9)
        assert (points.amax(0) + points.amin(0)).abs().amax() < 1e-9
        w2c = torch.tensor([frame["w2c"] for frame in meta["frames"]], dtype=torch.float64)
        assert torch.allclose(w2c[:, :3, :3] @ w2c[:, :3, :3].mT, torch.eye(3, dtype=w2c.dtype))
        assert (camera_centers(w2c)[:, 2] > 0).all()  # the synthetic orbits look down at 15-35 deg
        assert (-w2c[:, 1, 2] > 0.5).all()  # each camera's up (-y) points along +z
        for frame in meta["frames"]:
            assert frame["source_size_hw"] == [72, 96] and len(frame["crop_box"]) == 3


def test_stored_cameras_see_what_the_source_cameras_see_through_the_crop(shards, co3d_root):
    for sample in all_samples(shards).values():
        meta = json.loads(sample["json"])
        (sequence,) = read_category(co3d_root, meta["category"], sequences=[meta["sequence"]])[0]
        source = {frame.frame_number: frame for frame in sequence.frames}
        world = read_point_cloud(sequence.point_cloud_path)[:50]
        scene = transform_points(torch.tensor(meta["similarity"], dtype=torch.float64), world)
        for frame in meta["frames"]:
            original = source[frame["frame_number"]]
            uv_source, depth_source = project(world, original.K, original.w2c)
            left, top, side = frame["crop_box"]
            # Crop, then resize (corner-anchored: pixel centres sit at u + 0.5).
            expected = (uv_source - torch.tensor([left, top]) + 0.5) * 64 / side - 0.5
            K = torch.tensor(frame["K"], dtype=torch.float64)
            uv, depth = project(scene, K, torch.tensor(frame["w2c"], dtype=torch.float64))
            assert torch.allclose(uv, expected, atol=1e-6)
            assert torch.allclose(depth / depth_source, (depth / depth_source)[0])  # one scale


# Re-runs, leftovers, skips, workers.


def test_rerun_skips_complete_shards_and_rewrites_incomplete_ones(co3d_root, shards, tmp_path):
    out = tmp_path / "shards"
    write_shards(co3d_root, out, OPTIONS)
    first = digests(out)
    assert first == digests(shards)  # deterministic: same plan, same bytes
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert write_shards(co3d_root, out, OPTIONS)["rewritten"] == []
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes
    # A crash: shard 1 never renamed (a half-written temporary left), shard 2 renamed but the
    # manifest not updated yet. Both are written again, the rest is kept.
    (out / "train-000001.tar").unlink()
    (out / ".train-000001.tar.partial").write_bytes(b"half a shard")
    manifest = read_manifest(out)
    manifest["shards"] = manifest["shards"][:2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    rerun = write_shards(co3d_root, out, OPTIONS)
    assert sorted(rerun["rewritten"]) == ["train-000001.tar", "train-000002.tar"]
    assert digests(out) == first and not (out / ".train-000001.tar.partial").exists()
    assert (out / "train-000000.tar").stat().st_mtime_ns == mtimes["train-000000.tar"]
    assert (
        rerun["totals"] == read_manifest(out)["totals"] == {"shards": 3, "samples": 8, "frames": 48}
    )


def test_missing_files_and_point_clouds_are_skipped_and_counted(co3d_root, tmp_path):
    root = Path(shutil.copytree(co3d_root, tmp_path / "co3d"))
    box, can = (read_category(root, category)[0] for category in ("box", "can"))
    can[0].point_cloud_path.unlink()  # a whole sequence: no normalisation possible
    box[0].frames[3].image_path.unlink()  # one frame: the reader drops it
    Image.new("L", (96, 72)).save(box[1].frames[5].mask_path)  # one frame: object not in mask
    manifest = write_shards(root, tmp_path / "shards", OPTIONS)
    skipped = {reason: count for reason, count in manifest["skipped"].items() if count}
    assert skipped == {
        "sequences_without_point_cloud": 1,
        "frames_missing_files": 1,
        "frames_empty_mask": 1,
    }
    assert manifest["totals"]["samples"] == 6
    assert manifest["totals"]["frames"] == 3 * 12 - 2


def test_command_line_with_two_worker_processes_writes_the_same_shards(co3d_root, shards, tmp_path):
    prepare = runpy.run_path(str(REPO / "data/prepare_co3d.py"))
    argv = ["--co3d-root", str(co3d_root), "--out", str(tmp_path), "--size", "64"]
    argv += ["--crop", "object", "--max-frames", "8", "--samples-per-shard", "3", "--workers", "2"]
    manifest = prepare["main"](argv)
    assert manifest["totals"]["samples"] == 8
    assert digests(tmp_path) == digests(shards)


def test_worker_processes_do_not_run_out_of_file_descriptors(co3d_root, shards, tmp_path):
    # Through the pool's own pickler every camera tensor of every frame travelled as a
    # shared-memory file descriptor: 10k frames ran out of them. Here 48 frames x 2 tensors
    # are sent to workers under a limit of 64 open files in the parent.
    script = f"""
import resource, runpy
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
prepare = runpy.run_path({str(REPO / "data/prepare_co3d.py")!r})
prepare["main"](["--co3d-root", {str(co3d_root)!r}, "--out", {str(tmp_path)!r}, "--size", "64",
                 "--crop", "object", "--max-frames", "8", "--samples-per-shard", "3",
                 "--workers", "2"])
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert digests(tmp_path) == digests(shards)


@pytest.mark.parametrize("argv", [["--size", "60"], ["--min-frames", "2"]])
def test_command_line_rejects_bad_options(argv, tmp_path, capsys):
    prepare = runpy.run_path(str(REPO / "data/prepare_co3d.py"))
    with pytest.raises(SystemExit):
        prepare["main"](["--co3d-root", str(tmp_path), "--out", str(tmp_path), *argv])
    assert "error" in capsys.readouterr().err


def test_command_line_refuses_a_root_without_sequences(co3d_root, tmp_path, capsys):
    prepare = runpy.run_path(str(REPO / "data/prepare_co3d.py"))
    (tmp_path / "empty").mkdir()
    cases = [
        (["--co3d-root", str(tmp_path / "gone")], "CO3D root not found"),
        (["--co3d-root", str(tmp_path / "empty")], "no category folder with a frame_annotations"),
        (["--co3d-root", str(co3d_root), "--categories", "dragon"], "--categories: dragon not in"),
        (["--co3d-root", str(co3d_root), "--min-frames", "50", "--max-frames", "60"],
         "no sequence made a sample"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            prepare["main"]([*argv, "--out", str(tmp_path / "out"), "--size", "64"])
        assert exit_info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(lines) == 1 and message in lines[0], lines
