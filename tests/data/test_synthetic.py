"""Synthetic objects: renders agree with surface and key points, files, determinism, CLI."""

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.conventions import project
from viewdiff.data.co3d import read_category
from viewdiff.data.co3d_files import read_depth, read_mask
from viewdiff.data.raycast import render_object
from viewdiff.data.synthetic import make_synthetic_dataset, read_synthetic_objects
from viewdiff.data.synthetic_cameras import hand_held_orbit, sample_intrinsics
from viewdiff.data.synthetic_objects import CATEGORIES, make_object
from viewdiff.data.synthetic_surface import object_keypoints, surface_points
from viewdiff.ply import read_ply

SIZE_HW = (72, 96)  # non-square on purpose


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sequences of 6 frames per category, 96x72."""
    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(out, CATEGORIES, sequences=2, frames=6, size_wh=(96, 72))


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """Mask grown by one pixel: 'inside the mask within a pixel'."""
    return torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0.5


def _at(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Values of image (H, W) at the pixels nearest to uv (P, 2), which must be in the image."""
    pixels = uv.round().long()
    height, width = image.shape
    assert pixels[:, 0].min() >= 0 and pixels[:, 0].max() < width
    assert pixels[:, 1].min() >= 0 and pixels[:, 1].max() < height
    return image[pixels[:, 1], pixels[:, 0]]


def _check_points_against_render(points, K, w2c, mask, depth) -> float:
    """Every surface point lies in the mask (within a pixel) and never in front of the depth map;
    returns the fraction of points seen (depth matching at their pixel)."""
    uv, z = project(points, K, w2c)
    assert (z > 0).all()
    assert _at(_dilate(mask), uv).all(), "a surface point projects outside the object mask"
    # Where the 3x3 neighbourhood is object, the depth map's minimum there bounds every point.
    interior = ~_dilate(~mask)
    nearest = -torch.nn.functional.max_pool2d(-depth[None, None], 3, 1, 1)[0, 0]
    inner = _at(interior, uv)
    relative = (z - _at(nearest, uv)) / z
    assert (relative[inner] > -5e-3).all(), "a surface point lies in front of the depth map"
    return ((z - _at(depth, uv)).abs() / z < 1e-2)[inner].float().mean().item()


@pytest.mark.parametrize("category", CATEGORIES)
def test_render_agrees_with_the_object_surface(category):
    rng = np.random.default_rng(3)
    obj = make_object(category, rng)
    K = sample_intrinsics(rng, SIZE_HW)
    w2c = hand_held_orbit(obj, 5, K, SIZE_HW, rng)
    points = torch.from_numpy(surface_points(obj, 1500, rng)[0])
    keypoints = {k: torch.from_numpy(v).reshape(-1, 3) for k, v in object_keypoints(obj).items()}
    for view in w2c:
        image, mask, depth = render_object(obj, K, view, SIZE_HW)
        assert image.shape == (*SIZE_HW, 3) and image.dtype == np.uint8
        mask, depth = torch.from_numpy(mask), torch.from_numpy(depth)
        K_t, w2c_t = torch.from_numpy(K), torch.from_numpy(view)
        seen = _check_points_against_render(points, K_t, w2c_t, mask, depth)
        assert seen > 0.3  # about half of a closed surface faces the camera
        # The object is whole in the frame, its background is not object, and has depth.
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any()
        assert (depth[mask] > 0).all() and (depth[~mask] > 0).any() and (depth[~mask] == 0).any()
        uv, _ = project(keypoints["centre_world"], K_t, w2c_t)
        assert _at(mask, uv).all(), "the object's centre must project inside its silhouette"
        uv, _ = project(keypoints["surface_keypoints_world"], K_t, w2c_t)
        assert _at(_dilate(mask), uv).all()
        if category == "box":  # a box's tight box corners are its own corners
            uv, _ = project(keypoints["box_corners_world"], K_t, w2c_t)
            assert _at(_dilate(mask), uv).all()


def test_box_corners_of_a_ball_are_not_on_it():
    """Why surface_keypoints_world exists: a sphere's box corners leave its silhouette."""
    rng = np.random.default_rng(0)
    obj = make_object("ball", rng)
    K = sample_intrinsics(rng, SIZE_HW)
    view = hand_held_orbit(obj, 1, K, SIZE_HW, rng)[0]
    _, mask, _ = render_object(obj, K, view, SIZE_HW)
    corners = torch.from_numpy(object_keypoints(obj)["box_corners_world"])
    uv, _ = project(corners, torch.from_numpy(K), torch.from_numpy(view))
    assert not _at(torch.from_numpy(mask), uv).all()


def test_files_follow_the_co3d_layout(dataset):
    category = dataset / "can"
    with gzip.open(category / "frame_annotations.jgz", "rt") as stream:
        frames = json.load(stream)
    assert len(frames) == 12
    frame = frames[0]
    assert set(frame) == {"sequence_name", "frame_number", "frame_timestamp", "image", "depth",
                          "mask", "viewpoint", "meta"}  # fmt: skip
    assert frame["image"]["size"] == [72, 96]
    assert frame["image"]["path"] == f"can/{frame['sequence_name']}/images/frame000001.jpg"
    assert frame["depth"]["path"].endswith("/depths/frame000001.jpg.geometric.png")
    assert frame["viewpoint"]["intrinsics_format"] == "ndc_isotropic"
    assert frame["meta"]["frame_type"] == "train_known"
    with gzip.open(category / "sequence_annotations.jgz", "rt") as stream:
        sequences = json.load(stream)
    assert {s["sequence_name"] for s in sequences} == {f["sequence_name"] for f in frames}
    root = dataset
    with Image.open(root / frame["image"]["path"]) as image:
        assert image.format == "JPEG" and image.size == (96, 72)
    with Image.open(root / frame["mask"]["path"]) as mask:
        assert mask.mode == "L"
        assert frame["mask"]["mass"] == pytest.approx(np.asarray(mask).sum() / 255.0)
    with Image.open(root / frame["depth"]["path"]) as depth:
        assert depth.mode.startswith("I")  # 16-bit PNG
    with Image.open(root / frame["depth"]["mask_path"]) as depth_mask:
        assert depth_mask.mode == "1"
    cloud = read_ply(root / sequences[0]["point_cloud"]["path"])
    assert [(k, v.dtype.str[1:]) for k, v in cloud.items()] == [
        ("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")
    ]  # fmt: skip
    assert sequences[0]["point_cloud"]["n_points"] == len(cloud["x"])
    subsets = json.loads((root / "category_to_subset_name_list.json").read_text())
    assert subsets == {c: ["fewview_dev", "manyview_dev_0"] for c in sorted(CATEGORIES)}
    batches = json.loads((category / "eval_batches" / "eval_batches_fewview_dev.json").read_text())
    assert batches and all(len(batch) == 3 for batch in batches)


def test_key_points_project_into_every_stored_mask(dataset):
    """The downstream check: known 3D points of each object land in each view's mask."""
    for category in CATEGORIES:
        sequences, report = read_category(dataset, category)
        objects = read_synthetic_objects(dataset, category)
        assert report.frames == 12 and set(objects) == {s.name for s in sequences}
        for sequence in sequences:
            known = objects[sequence.name]
            assert known["caption"] == sequence.captions[0] and known["caption"].startswith("a")
            points = torch.cat([known["surface_keypoints_world"], known["centre_world"][None]])
            for frame in sequence.frames:
                mask = read_mask(frame.mask_path) > 0.5
                uv, depth = project(points, frame.K, frame.w2c)
                assert (depth > 0).all() and _at(_dilate(mask), uv).all()
                assert _at(mask, uv[-1:]).all()  # the centre, strictly inside
                assert (read_depth(frame.depth_path, frame.depth_scale)[mask] > 0).all()


def _digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kwargs = {"categories": ["composite"], "sequences": 1, "frames": 2, "size_wh": (40, 30)}
    first = _digest(make_synthetic_dataset(tmp_path / "a", seed=5, **kwargs))
    second = _digest(make_synthetic_dataset(tmp_path / "b", seed=5, **kwargs))
    other = _digest(make_synthetic_dataset(tmp_path / "c", seed=6, **kwargs))
    assert first == second
    assert len(first) > 10
    for name in ("frame_annotations.jgz", "synthetic_objects.json", "captions.json"):
        assert first[f"composite/{name}"] != other[f"composite/{name}"]
    assert sorted(first) != sorted(other)  # sequence names differ too


def test_bad_arguments_and_existing_output_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic categories \\['teapot'\\]"):
        make_synthetic_dataset(tmp_path, ["box", "teapot"])
    with pytest.raises(ValueError, match="frames"):
        make_synthetic_dataset(tmp_path, ["box"], frames=0)
    make_synthetic_dataset(tmp_path, ["box"], sequences=1, frames=1, size_wh=(32, 24))
    with pytest.raises(FileExistsError, match="box is not empty"):
        make_synthetic_dataset(tmp_path, ["box"], sequences=1, frames=1, size_wh=(32, 24))
    make_synthetic_dataset(tmp_path, ["box"], 1, 2, (32, 24), seed=1, overwrite=True)
    assert len(list((tmp_path / "box").glob("*/images/*.jpg"))) == 2


def test_command_line_writes_and_reports(tmp_path, capsys):
    script = Path(__file__).parents[2] / "data" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--out", str(tmp_path), "--categories", "ball", "--sequences", "3", "--frames", "2",
            "--size", "40x30", "--seed", "1"]  # fmt: skip
    assert module.main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 sequences x 2 frames of 40x30" in printed
    assert "fewview_dev, fewview_test, manyview_dev_0" in printed and " ball with " in printed
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path), "--size", "40by30"])
