"""The sided toy world: one darker side placed per object, its own light, a world-fixed
backdrop drawn apart from the object, the object about half the frame; the plain world as it was."""

import colorsys
import dataclasses
import json

import numpy as np
import pytest

from viewdiff.data.raycast import albedo, render_object
from viewdiff.data.synthetic import make_synthetic_dataset, read_synthetic_objects
from viewdiff.data.synthetic_cameras import hand_held_orbit, sample_intrinsics
from viewdiff.data.synthetic_objects import make_object
from viewdiff.data.toy_objects import TOY_COLOURS, TOY_SHAPES, toy_colour
from viewdiff.toy.images import read_shard_images
from viewdiff.toy.quality import make_toy_shards

SIZE_HW = (64, 64)


def sided(shape: str, index: int):
    return make_object(shape, np.random.default_rng(index), style="toy_sided", index=index)


def orbit_renders(obj, seed: int = 0, frames: int = 8, size_hw=SIZE_HW):
    rng = np.random.default_rng(seed)
    K = sample_intrinsics(rng, size_hw)
    return [
        render_object(obj, K, w, size_hw) for w in hand_held_orbit(obj, frames, K, size_hw, rng)
    ]


def hsv(image: np.ndarray) -> np.ndarray:
    return np.array([colorsys.rgb_to_hsv(*p) for p in image.reshape(-1, 3) / 255.0]).reshape(
        *image.shape
    )


@pytest.mark.parametrize("shape", TOY_SHAPES)
def test_a_sided_object_is_the_plain_one_with_a_darker_side_light_and_world(shape):
    for index in range(3):
        plain = make_object(shape, np.random.default_rng(index), style="toy", index=index)
        obj = sided(shape, index)
        # Drawn after all the plain world draws: shape, colour, caption and placement are equal.
        assert obj.caption == plain.caption
        assert np.array_equal(obj.object_to_world, plain.object_to_world)
        (prim,), (plain_prim,) = obj.primitives, plain.primitives
        assert np.array_equal(prim.size, plain_prim.size)
        assert np.array_equal(prim.palette, plain_prim.palette)
        assert plain.mark is None and plain.environment is None and plain.light is None
        # The darker side: albedo times the shade on the mark, the palette elsewhere.
        rng = np.random.default_rng(0)
        points = prim.centre + prim.size * rng.uniform(-1, 1, (4000, 3))
        inside = (points - prim.centre) / prim.size @ obj.mark.direction > obj.mark.threshold
        colours = albedo(obj, prim, points, np.zeros(len(points), dtype=int))
        assert 0.2 <= obj.mark.shade <= 0.3 and inside.any() and (~inside).any()
        assert np.allclose(colours[inside], prim.palette[0] * obj.mark.shade)
        assert np.allclose(colours[~inside], prim.palette[0])


def test_where_the_darker_side_sits_is_drawn_per_object():
    for shape in TOY_SHAPES:
        directions = {tuple(np.round(sided(shape, i).mark.direction, 3)) for i in range(12)}
        assert len(directions) >= 4, shape  # box: 5 sides to draw from; balls, cans: any azimuth


@pytest.mark.parametrize("shape", TOY_SHAPES)
def test_the_darker_side_is_seen_from_some_views_and_not_others(shape):
    for index in range(3):
        obj = sided(shape, index)
        colour = TOY_COLOURS[toy_colour(index, shape)]
        dark_share = []
        for image, mask, _ in orbit_renders(obj, index):
            pixels = hsv(image)[mask]
            hue_error = np.abs((pixels[:, 0] - colour + 0.5) % 1.0 - 0.5)
            bright = pixels[:, 2] > 0.3  # the darkest mark pixels round to unsure hues
            assert hue_error[bright].max() < 0.04 and pixels[bright, 1].min() > 0.55
            dark_share.append(float((pixels[:, 2] < 0.45 * np.quantile(pixels[:, 2], 0.9)).mean()))
        # Facing the camera it is a large part of the object; turned away, none or a sliver.
        assert max(dark_share) > 0.1 and min(dark_share) < 0.25 * max(dark_share), dark_share


def test_the_backdrop_is_unsaturated_smooth_and_differs_from_side_to_side():
    spreads = []
    for index in range(6):
        obj = sided(TOY_SHAPES[index % 3], index)
        means = []
        for image, mask, _ in orbit_renders(obj, index):
            backdrop = hsv(image)[~mask]
            assert backdrop[:, 1].max() < 0.25  # never read as an object (classifier: > 0.35)
            grey = image.astype(float).mean(-1)
            steps = np.abs(np.diff(grey, axis=0))[~(mask[1:] | mask[:-1])]
            assert steps.max() <= 14.0  # a soft horizon, no texture
            means.append(grey[~mask].mean())
        spreads.append((max(means) - min(means)) / np.mean(means))
    assert np.median(spreads) > 0.05  # a camera going round sees the backdrop change


def test_sided_shards_hold_the_object_at_about_half_the_frame(tmp_path):
    shards = make_toy_shards(tmp_path, 2, 4, seed=0, style="toy_sided")
    images = read_shard_images(shards, show_progress=False)
    masks = images.masks[:, 0] > 127  # (M, H, W)
    extents = []
    for mask in masks:
        rows, cols = np.nonzero(mask.numpy())
        extents.append(max(np.ptp(rows), np.ptp(cols)) + 1)
    share = np.mean(extents) / masks.shape[-1]
    assert images.images.shape[-1] == 64 and 0.42 < share < 0.66, share
    # Where each object's darker side is, is written beside it (for measures on renders).
    objects = read_synthetic_objects(tmp_path / "co3d", "box")
    assert all(len(entry["mark"]["direction"]) == 3 for entry in objects.values())
    plain = make_synthetic_dataset(tmp_path / "plain", ["box"], 1, 2, (32, 32), 0, points=10,
                                   style="toy")  # fmt: skip
    assert "mark" not in json.dumps(read_synthetic_objects(plain, "box"), default=str)


def test_unmarking_a_sided_object_leaves_only_its_shading():
    obj = sided("box", 1)
    ((marked, mask, _),) = orbit_renders(obj, 0, frames=1)
    ((unmarked, _, _),) = orbit_renders(dataclasses.replace(obj, mark=None), 0, frames=1)
    assert np.array_equal(marked[~mask], unmarked[~mask])  # the backdrop is the same


def test_the_renders_command_draws_a_row_per_object(tmp_path, capsys):
    from PIL import Image

    from viewdiff.commands.toy import main

    out = tmp_path / "world.png"
    argv = ["renders", "--objects", "2", "--views", "3", "--size", "24", "--out", str(out)]
    assert main(argv) == 0
    assert Image.open(out).size == (3 * 24, 2 * 24)
    with pytest.raises(SystemExit) as exit_info:  # a folder is not a PNG file
        main([*argv[:-1], str(tmp_path)])
    assert exit_info.value.code == 2 and "is a folder" in capsys.readouterr().err
