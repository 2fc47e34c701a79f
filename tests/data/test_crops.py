"""How views are cut from their frames: full-frame shards, the stream's random squares (the
reference's batch.crop random), object-crop shards streaming as before, refused mismatches,
the caption fallback, and the prior set read by both crops."""

import io
import json
import random
import runpy
import tarfile
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.conventions import project, transform_points
from viewdiff.config import DataConfig, load_config, read_config_json, save_config
from viewdiff.data.co3d import read_category
from viewdiff.data.crops import CropMismatch, crop_for, random_square
from viewdiff.data.prior_set import PriorOptions, write_prior_set
from viewdiff.data.shard_manifest import read_manifest
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.stream import build_loader, build_pipeline
from viewdiff.data.synthetic import make_synthetic_dataset, read_synthetic_objects
from viewdiff.prior.camera_record import record_shards

REPO = Path(__file__).resolve().parents[2]
# 2 categories x 2 sequences x 8 frames of 160x80 -> 4 samples of 8 views in 2 shards; full
# frames are stored 128x64, so a 64 px square has 65 horizontal offsets and often cuts the object.
SIZE, SOURCE_WH, STORED_HW = 64, (160, 80), (64, 128)
SIDE = min(STORED_HW)  # of the random squares, stored px
SCALE = torch.tensor([128 / 160, 64 / 80], dtype=torch.float64)  # source -> stored, (x, y)
OPTIONS = ShardOptions(image_size=SIZE, max_frames=8, min_frames=5, samples_per_shard=2)


@pytest.fixture(scope="module")
def co3d_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("co3d")
    return make_synthetic_dataset(out, ("box", "can"), 2, 8, SOURCE_WH, seed=2, points=300)


@pytest.fixture(scope="module")
def full_shards(co3d_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written by the command line with its default crop (the paper's: full)."""
    out = tmp_path_factory.mktemp("full")
    prepare = runpy.run_path(str(REPO / "data/prepare_co3d.py"))
    prepare["main"](["--co3d-root", str(co3d_root), "--out", str(out), "--size", str(SIZE),
                     "--max-frames", "8", "--samples-per-shard", "2"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def object_shards(co3d_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("object")
    write_shards(co3d_root, out, replace(OPTIONS, crop="object"))
    return out


def config(shards: Path | str, **changes) -> DataConfig:
    base = DataConfig(shards=str(shards), image_size=SIZE, n_views=3, num_workers=0,
                      shuffle_buffer=2)  # fmt: skip
    return replace(base, **changes)


def one_pass(data: DataConfig, seed: int = 5) -> list[dict]:
    """Every batch (of 2 objects) of one finite pass over the shards."""
    return list(build_loader(data, batch_size=2, seed=seed, resampled=False))


def read_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of every shard of a folder."""
    samples: dict[str, dict[str, bytes]] = {}
    for entry in read_manifest(folder)["shards"]:
        with tarfile.open(folder / entry["name"]) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def decoded(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert(mode))


def stored_views(samples: dict, batch: dict, b: int) -> tuple[list[dict], list[int]]:
    """The stored frames' JSON of object ``b`` of a batch and their indices in its sample."""
    meta = json.loads(samples[batch["key"][b]]["json"])
    numbers = [frame["frame_number"] for frame in meta["frames"]]
    indices = [numbers.index(n) for n in batch["frame_numbers"][b].tolist()]
    return [meta["frames"][i] for i in indices], indices


def crop_offsets(batch: dict, b: int, frames: list[dict], size: int) -> list[tuple[int, int]]:
    """(left, top) of each view's square, read back from its intrinsics: a square of side SIDE
    resized to ``size`` maps stored pixel u to (u - left + 0.5) * size / SIDE - 0.5."""
    offsets = []
    for K, frame in zip(batch["K"][b].double(), frames, strict=True):
        stored = torch.tensor(frame["K"], dtype=torch.float64)
        principal = (K[:2, 2] + 0.5) * SIDE / size - 0.5
        left, top = (stored[:2, 2] - principal).tolist()
        assert left == pytest.approx(round(left), abs=1e-3), left
        assert top == pytest.approx(round(top), abs=1e-3), top
        offsets.append((round(left), round(top)))
    return offsets


# Full-frame shards.


def test_full_frame_shards_store_whole_frames_with_their_cameras(full_shards, co3d_root):
    manifest = read_manifest(full_shards)
    assert manifest["crop"] == "full" and manifest["options"]["crop"] == "full"
    for sample in read_samples(full_shards).values():
        meta = json.loads(sample["json"])
        assert meta["crop"] == "full" and meta["image_size"] == SIZE
        (sequence,) = read_category(co3d_root, meta["category"], sequences=[meta["sequence"]])[0]
        source = {frame.frame_number: frame for frame in sequence.frames}
        known = read_synthetic_objects(co3d_root, meta["category"])[meta["sequence"]]
        world = known["surface_keypoints_world"]  # (14, 3)
        scene = transform_points(torch.tensor(meta["similarity"], dtype=torch.float64), world)
        for index, frame in enumerate(meta["frames"]):
            assert frame["size_hw"] == list(STORED_HW) and "crop_box" not in frame
            assert Image.open(io.BytesIO(sample[f"{index:03d}.jpg"])).size == STORED_HW[::-1]
            assert decoded(sample[f"{index:03d}.mask.png"], "L").shape == STORED_HW
            original = source[frame["frame_number"]]
            uv_source, _ = project(world, original.K, original.w2c)
            K, w2c = (torch.tensor(frame[k], dtype=torch.float64) for k in ("K", "w2c"))
            uv, _ = project(scene, K, w2c)
            # The whole frame resized (corner-anchored: pixel centres sit at u + 0.5).
            torch.testing.assert_close(uv, (uv_source + 0.5) * SCALE - 0.5, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [64, 32])  # 32: each square decoded down
def test_random_square_keeps_known_points_on_their_pixels(full_shards, co3d_root, size):
    samples = read_samples(full_shards)
    inside_points = outside_points = 0
    for batch in one_pass(config(full_shards, n_views=8, image_size=size)):
        dilated = torch.nn.functional.max_pool2d(batch["masks"][:, :, 0], 3, 1, 1)  # 1 px slack
        for b in range(len(batch["key"])):
            frames, indices = stored_views(samples, batch, b)
            offsets = crop_offsets(batch, b, frames, size)
            category, name = batch["category"][b], batch["sequence"][b]
            (sequence,) = read_category(co3d_root, category, sequences=[name])[0]
            source = {frame.frame_number: frame for frame in sequence.frames}
            known = read_synthetic_objects(co3d_root, category)[name]
            world = torch.cat([known["centre_world"][None], known["surface_keypoints_world"]])
            scene = transform_points(batch["similarity"][b].double(), world)
            uv, _ = project(scene, batch["K"][b].double(), batch["w2c"][b].double())  # (V, P, 2)
            for v, (frame, (left, top)) in enumerate(zip(frames, offsets, strict=True)):
                assert 0 <= left <= STORED_HW[1] - SIDE and top == 0  # a square of 128x64
                # Projected with the full source frame's camera, then resized and cut.
                original = source[frame["frame_number"]]
                uv_source, _ = project(world, original.K, original.w2c)
                stored = (uv_source + 0.5) * SCALE - 0.5
                expected = (stored - torch.tensor([left, top]) + 0.5) * size / SIDE - 0.5
                torch.testing.assert_close(uv[v], expected, atol=1e-4, rtol=0)
                # The points inside the square are on the object in the view as fed.
                pixels = uv[v].round().long()
                inside = ((pixels >= 0) & (pixels < size)).all(-1)
                on_object = dilated[b, v][pixels[inside, 1], pixels[inside, 0]]
                assert (on_object > 0.5).all(), f"{category}/{name} view {v}: off the object"
                inside_points += int(inside.sum())
                outside_points += int((~inside).sum())
                if size == 64:  # the view is the stored frame's pixels, cut, unresampled
                    jpg = samples[batch["key"][b]][f"{indices[v]:03d}.jpg"]
                    square = decoded(jpg)[top : top + SIDE, left : left + SIDE]
                    view = (batch["images"][b, v].permute(1, 2, 0) + 1.0) * 127.5
                    assert np.array_equal(view.round().byte().numpy(), square)
    assert inside_points > 100 and outside_points > 0  # some squares cut the object


def test_crop_offsets_are_seeded_per_view_and_sample(full_shards):
    samples = read_samples(full_shards)

    def offsets(seed: int) -> list[tuple[int, int]]:
        batches = list(islice(build_loader(config(full_shards), 2, seed=seed), 4))
        return [
            offset
            for batch in batches
            for b in range(2)
            for offset in crop_offsets(batch, b, stored_views(samples, batch, b)[0], SIZE)
        ]

    first = offsets(seed=3)
    assert offsets(seed=3) == first  # the same seed: the same squares (exact resume)
    assert len(set(first)) > 8  # 24 views: offsets differ between views and samples
    assert offsets(seed=4) != first


def test_random_square_draws_every_offset_of_a_min_side_square():
    rng = random.Random(0)
    boxes = [random_square((64, 85), rng) for _ in range(2000)]
    assert {side for _, _, side in boxes} == {64} and {top for _, top, _ in boxes} == {0}
    assert {left for left, _, _ in boxes} == set(range(22))  # 0 .. 85 - 64, each drawn
    assert {random_square((90, 60), rng)[1] for _ in range(500)} == set(range(31))
    assert random_square((64, 64), rng) == (0, 0, 64)  # a square frame is its own square


# Object-crop shards, as before.

# Drawn by the stream before data.crop existed, from this module's object-crop shards.
DRAWN_BEFORE = [
    ("box--1_52534_93535--000", [3, 7, 0], "a yellow and green striped box"),
    ("can--1_62914_96391--000", [3, 2, 6], "a green to purple can with a cyan stripe"),
    ("box--2_67140_62527--000", [1, 4, 7], "a pink and green striped box"),
    ("can--2_42855_6268--000", [3, 1, 7], "a pink to blue can with a purple stripe"),
]


def drop_crop_key(folder: Path) -> None:
    """Rewrite a shard folder as written before ``crop`` existed: no key in JSON or manifest."""
    manifest = read_manifest(folder)
    for entry in manifest["shards"]:
        path = folder / entry["name"]
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(path, "w") as tar:
            for member, data in members:
                if member.name.endswith(".json"):
                    meta = json.loads(data)
                    del meta["crop"]
                    data = json.dumps(meta).encode()
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    del manifest["crop"], manifest["options"]["crop"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_object_crop_shards_stream_as_before(object_shards, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for path in object_shards.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    drop_crop_key(old)
    data = config(object_shards, crop="object", caption_fallback="category")
    batches, old_batches = one_pass(data), one_pass(replace(data, shards=str(old)))
    drawn = [
        (key, numbers, prompt)
        for batch in batches
        for key, numbers, prompt in zip(
            batch["key"], batch["frame_numbers"].tolist(), batch["prompt"], strict=True
        )
    ]
    assert drawn == DRAWN_BEFORE
    samples = read_samples(object_shards)
    for batch, old_batch in zip(batches, old_batches, strict=True):
        for key in ("images", "masks", "K", "w2c", "pose_features", "intensity_stats"):
            assert torch.equal(batch[key], old_batch[key]), key
        for b in range(2):
            frames, indices = stored_views(samples, batch, b)
            stored_K = torch.tensor([frame["K"] for frame in frames])
            torch.testing.assert_close(batch["K"][b], stored_K, atol=0, rtol=0)
            for v, index in enumerate(indices):  # the stored squares, as they are
                view = (batch["images"][b, v].permute(1, 2, 0) + 1.0) * 127.5
                stored = decoded(samples[batch["key"][b]][f"{index:03d}.jpg"])
                assert np.array_equal(view.round().byte().numpy(), stored)


# Mismatches.


def test_random_square_refuses_object_crop_shards(object_shards):
    with pytest.raises(CropMismatch) as error:
        build_loader(config(object_shards), 2, 0)
    message = str(error.value)
    assert f"{object_shards / 'manifest.json'}: the shards hold views cropped around" in message
    assert "data.crop is random_square" in message and "--crop full" in message
    # A URL has no manifest: the first sample refuses, raised (not counted and skipped).
    pattern = f"{object_shards}/train-{{000000..000001}}.tar"
    with pytest.raises(CropMismatch, match=r"train-00000[01]\.tar: sample \w.*data\.crop"):
        next(iter(build_loader(config(pattern), 2, 0)))


def test_object_refuses_full_frame_shards(full_shards):
    with pytest.raises(CropMismatch, match="hold full frames .* data.crop is object"):
        build_loader(config(full_shards, crop="object"), 2, 0)
    pattern = f"{full_shards}/train-{{000000..000001}}.tar"
    with pytest.raises(CropMismatch, match=r"train-00000[01]\.tar: sample .*--crop object"):
        next(iter(build_pipeline(config(pattern, crop="object"), 2, 0)))


def test_camera_records_read_shards_as_they_were_written(full_shards, object_shards):
    assert crop_for(str(full_shards)) == "random_square"
    assert crop_for(str(object_shards)) == "object"
    assert crop_for(f"{object_shards}/train-000000.tar", default="object") == "object"
    for shards in (full_shards, object_shards):  # each streams without a mismatch
        assert record_shards(str(shards), SIZE, 2, max_samples=2).count == 4  # 2 x 2 views


# Captions.


def test_caption_fallback_is_empty_or_the_category(full_shards, tmp_path):
    folder = tmp_path / "uncaptioned"
    folder.mkdir()
    for path in full_shards.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    for entry in read_manifest(folder)["shards"]:
        path = folder / entry["name"]
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(path, "w") as tar:
            for member, data in members:
                if member.name.endswith(".json"):
                    data = json.dumps({**json.loads(data), "captions": []}).encode()
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    prompts = {p for batch in one_pass(config(folder)) for p in batch["prompt"]}
    assert prompts == {""}  # the reference's get_blip_prompt without captions
    fallback = config(folder, caption_fallback="category")
    assert {p for batch in one_pass(fallback) for p in batch["prompt"]} == {"a box", "a can"}
    captioned = {p for batch in one_pass(config(full_shards)) for p in batch["prompt"]}
    assert "" not in captioned and len(captioned) == 4  # a caption of each sequence


def test_presets_and_saved_configs_choose_their_crop_and_fallback(tmp_path):
    paper = load_config(REPO / "configs/co3d_sd21.yaml").data
    assert (paper.crop, paper.caption_fallback, paper.categories) == (
        "random_square", "empty", ("teddybear",))  # fmt: skip
    toy = load_config(REPO / "configs/toy_cpu.yaml").data
    assert (toy.crop, toy.caption_fallback) == ("object", "category")  # as the toy prior trained
    # A config saved before the keys existed keeps what its model was trained with.
    path = tmp_path / "config.json"
    save_config(load_config(REPO / "configs/co3d_sd21.yaml"), path)
    saved = json.loads(path.read_text())
    del saved["data"]["crop"], saved["data"]["caption_fallback"]
    path.write_text(json.dumps(saved))
    old = read_config_json(path).data
    assert (old.crop, old.caption_fallback) == ("object", "category")


# The prior preservation set: whole square images, read by either crop.


class FakePipeline:
    """Stands in for the base pipeline: flat colour images of the requested count."""

    def __call__(self, caption: str, num_images_per_prompt: int, **kwargs):
        shade = (len(caption) % 7) / 7.0
        images = np.full((num_images_per_prompt, SIZE, SIZE, 3), shade, dtype=np.float32)
        images[:, :, : SIZE // 2, 0] = 1.0  # a left half unlike the right: a shift would show
        return type("Output", (), {"images": images})()


def test_prior_set_streams_unchanged_with_either_crop(tmp_path):
    captions = [("box", "a red box"), ("can", "a tall blue can")]
    out = tmp_path / "prior"
    write_prior_set(FakePipeline, captions, out, PriorOptions(image_size=SIZE))
    batches = {
        crop: one_pass(config(out, crop=crop, n_views=1), seed=0)
        for crop in ("random_square", "object")
    }
    for first, second in zip(batches["random_square"], batches["object"], strict=True):
        assert first["key"] == second["key"]
        for key in ("images", "K", "w2c"):
            assert torch.equal(first[key], second[key]), key
    samples = read_samples(out)
    for batch in batches["random_square"]:
        for b, key in enumerate(batch["key"]):
            stored = torch.tensor(json.loads(samples[key]["json"])["frames"][0]["K"])
            torch.testing.assert_close(batch["K"][b, 0], stored, atol=0, rtol=0)
