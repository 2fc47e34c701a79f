"""The toy world's objects: single hue, plain backdrop, captions from parameters, CO3D layout."""

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest

from viewdiff.config import DataConfig
from viewdiff.data.co3d import read_category
from viewdiff.data.raycast import render_object
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.stream import build_loader
from viewdiff.data.synthetic import make_synthetic_dataset, read_synthetic_objects, sequence_object
from viewdiff.data.synthetic_cameras import hand_held_orbit, sample_intrinsics
from viewdiff.data.synthetic_objects import CATEGORIES, make_object
from viewdiff.data.toy_objects import TOY_COLOURS, TOY_SHAPES, toy_colour, toy_prompts
from viewdiff.tiny import write_tokenizer

SIZE_HW = (64, 64)


def render(obj, seed: int = 0):
    rng = np.random.default_rng(seed)
    K = sample_intrinsics(rng, SIZE_HW)
    w2c = hand_held_orbit(obj, 3, K, SIZE_HW, rng)
    return [render_object(obj, K, w, SIZE_HW) for w in w2c]


@pytest.mark.parametrize("shape", TOY_SHAPES)
def test_a_toy_object_is_one_hue_before_a_grey_backdrop_with_no_ground(shape):
    for index in range(len(TOY_COLOURS)):
        obj = make_object(shape, np.random.default_rng(index), style="toy", index=index)
        colour = toy_colour(index, shape)
        assert obj.caption in (f"a {colour} {shape}", f"an {colour} {shape}")
        for image, mask, depth in render(obj, index):
            assert mask.mean() > 0.05
            hsv = np.array([colorsys.rgb_to_hsv(*p) for p in image.reshape(-1, 3) / 255.0])
            hsv = hsv.reshape(*SIZE_HW, 3)
            # Object pixels: the named hue (within the jitter and 8-bit rounding), saturated.
            hue_error = np.abs((hsv[mask][:, 0] - TOY_COLOURS[colour] + 0.5) % 1.0 - 0.5)
            assert hue_error.max() < 0.03 and hsv[mask][:, 1].min() > 0.6
            # Backdrop pixels: low saturation; no ground, so depth is the object's only.
            assert hsv[~mask][:, 1].max() < 0.2
            assert np.array_equal(depth > 0, mask)


def test_the_backdrop_is_low_frequency():
    obj = make_object("ball", np.random.default_rng(0), style="toy", index=0)
    image, mask, _ = render(obj)[0]
    grey = image.astype(float).mean(-1)
    steps = np.abs(np.diff(grey, axis=1))[~(mask[:, 1:] | mask[:, :-1])]
    assert steps.max() <= 3.0  # a smooth gradient: no checker, no texture


def test_colours_cycle_so_that_small_datasets_hold_all_six():
    for shape in TOY_SHAPES:
        assert {toy_colour(i, shape) for i in range(6)} == set(TOY_COLOURS)
    assert {toy_colour(i, s) for s in TOY_SHAPES for i in range(2)} == set(TOY_COLOURS)
    assert len(toy_prompts()) == 18 and "an orange ball" in toy_prompts()


def test_every_caption_word_is_a_whole_word_of_the_tiny_tokenizer(tmp_path: Path):
    vocab = write_tokenizer(tmp_path)
    captions = set(toy_prompts())
    for category in CATEGORIES:  # the textured objects' captions too
        for seed in range(40):
            captions.add(make_object(category, np.random.default_rng(seed)).caption)
    missing = {w for c in captions for w in c.split() if f"{w}</w>" not in vocab}
    assert not missing, f"words the tokenizer splits into pieces: {sorted(missing)}"


def test_toy_dataset_is_read_packed_and_streamed_like_co3d(tmp_path: Path):
    root = make_synthetic_dataset(tmp_path / "co3d", None, 2, 6, (96, 96), seed=3, style="toy")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(TOY_SHAPES)
    sequences, _ = read_category(root, "can")
    assert [s.captions[0] for s in sequences] == ["a blue can", "a purple can"]
    objects = read_synthetic_objects(root, "can")
    entry = next(iter(objects.values()))
    assert entry["style"] == "toy"
    rebuilt = sequence_object("can", entry["index"], entry["seed"], entry["style"])
    assert rebuilt.caption == entry["caption"] and rebuilt.plain
    write_shards(root, tmp_path / "shards", ShardOptions(image_size=64, samples_per_shard=4))
    data = DataConfig(shards=str(tmp_path / "shards"), image_size=64, n_views=4, num_workers=0)
    batch = next(iter(build_loader(data, batch_size=6, seed=0, resampled=False)))
    assert batch["images"].shape == (6, 4, 3, 64, 64)
    assert set(batch["prompt"]) == set(toy_prompts()[i] for i in (0, 1, 8, 9, 16, 17))
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 6


def test_unknown_toy_shape_and_style_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown synthetic categories \\['composite'\\]"):
        make_synthetic_dataset(tmp_path, ["composite"], style="toy")
    with pytest.raises(ValueError, match="unknown synthetic style 'cartoon'"):
        make_synthetic_dataset(tmp_path, style="cartoon")
