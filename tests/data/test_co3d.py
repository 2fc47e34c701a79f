"""CO3Dv2 reader: exact cameras (both NDC formats), point clouds in masks and depth, tolerance of
extra keys, missing files, errors that name the file and frame, set lists, captions."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewdiff.cameras.cameras_json import read_cameras
from viewdiff.cameras.conventions import pixel_to_ndc_intrinsics, project
from viewdiff.data.co3d import list_categories, read_category
from viewdiff.data.co3d_annotations import Co3dFormatError, read_jgz, write_jgz
from viewdiff.data.co3d_files import (
    read_depth,
    read_mask,
    read_point_cloud,
    write_depth,
    write_mask,
)
from viewdiff.data.co3d_set_lists import list_subsets
from viewdiff.data.raycast import render_object
from viewdiff.data.synthetic import make_synthetic_dataset, read_synthetic_objects, sequence_object

SEED = 3


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sequences (train, test, dev) of 8 frames for two categories, 96x72."""
    out = tmp_path_factory.mktemp("co3d")
    return make_synthetic_dataset(out, ["box", "composite"], 3, 8, (96, 72), seed=SEED)


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(source, tmp_path / "copy"))


def _frames(root: Path, category: str = "box") -> list[dict]:
    return read_jgz(root / category / "frame_annotations.jgz")


def test_categories_and_subsets(root):
    (root / "notes").mkdir(exist_ok=True)  # a folder without annotations is no category
    assert list_categories(root) == ["box", "composite"]
    assert list_subsets(root, "box") == ["fewview_dev", "fewview_test", "manyview_dev_0"]
    with pytest.raises(FileNotFoundError, match="CO3D root not found"):
        list_categories(root / "missing")


def test_reader_recovers_the_rendering_cameras(source):
    sequences, report = read_category(source, "box")
    assert (report.sequences, report.frames, report.frames_missing_files) == (3, 24, 0)
    for sequence in sequences:
        K, w2c, size_hw = read_cameras(source / "box" / sequence.name / "cameras.json")
        assert [f.frame_number for f in sequence.frames] == list(range(8))
        assert all(f.image_size_hw == size_hw == (72, 96) for f in sequence.frames)
        read_K = torch.stack([f.K for f in sequence.frames])
        read_w2c = torch.stack([f.w2c for f in sequence.frames])
        assert read_K.dtype == read_w2c.dtype == torch.float64
        torch.testing.assert_close(read_K, K, atol=1e-6, rtol=0)
        torch.testing.assert_close(read_w2c, w2c, atol=1e-6, rtol=0)
        assert not torch.allclose(K[:, 0, 0], K[:, 1, 1])  # fx != fy: both axes exercised


@pytest.mark.parametrize("explicit", [True, False])
def test_v1_intrinsics_give_the_same_cameras(root, explicit):
    """ndc_norm_image_bounds values (CO3Dv1), written out or left to CO3D's default."""
    expected, _ = read_category(root, "box")
    frames = _frames(root)
    for frame in frames:
        name = frame["sequence_name"]
        K = next(s for s in expected if s.name == name).frames[frame["frame_number"]].K
        focal, principal = pixel_to_ndc_intrinsics(K, (72, 96), "ndc_norm_image_bounds")
        viewpoint = frame["viewpoint"]
        viewpoint["focal_length"], viewpoint["principal_point"] = focal.tolist(), principal.tolist()
        if explicit:
            viewpoint["intrinsics_format"] = "ndc_norm_image_bounds"
        else:
            del viewpoint["intrinsics_format"]
    write_jgz(root / "box" / "frame_annotations.jgz", frames)
    assert frames[0]["viewpoint"]["focal_length"][0] != pytest.approx(
        frames[0]["viewpoint"]["focal_length"][1], rel=1e-2
    )  # v1 NDC is anisotropic on a non-square image: a wrong format would show
    sequences, _ = read_category(root, "box")
    for old, new in zip(expected, sequences, strict=True):
        for a, b in zip(old.frames, new.frames, strict=True):
            torch.testing.assert_close(a.K, b.K, atol=1e-6, rtol=0)
            torch.testing.assert_close(a.w2c, b.w2c, atol=0, rtol=0)


def test_rendering_from_the_read_cameras_reproduces_the_files(source):
    """Re-render each object from the cameras as read: same mask, depth and (JPEG) image."""
    sequences, _ = read_category(source, "composite")
    objects = read_synthetic_objects(source, "composite")
    for sequence in sequences:
        known = objects[sequence.name]
        obj = sequence_object("composite", known["index"], known["seed"])
        for frame in sequence.frames[::3]:
            image, mask, depth = render_object(
                obj, frame.K.numpy(), frame.w2c.numpy(), frame.image_size_hw
            )
            assert np.array_equal(read_mask(frame.mask_path).numpy() > 0.5, mask)
            stored = read_depth(frame.depth_path, frame.depth_scale).numpy()
            np.testing.assert_allclose(stored, depth, rtol=1e-3)  # float16 in the PNG
            with Image.open(frame.image_path) as jpeg:
                error = np.abs(np.asarray(jpeg, dtype=float) - image).mean()
            assert error < 4.0  # JPEG quality 95


def test_point_cloud_lies_in_masks_and_on_the_depth_maps(source):
    sequences, _ = read_category(source, "box")
    for sequence in sequences:
        points = read_point_cloud(sequence.point_cloud_path)
        assert points.dtype == torch.float64 and points.shape[1] == 3 and len(points) > 1000
        seen = []
        for frame in sequence.frames:
            mask = read_mask(frame.mask_path) > 0.5
            depth = read_depth(frame.depth_path, frame.depth_scale)
            uv, z = project(points, frame.K, frame.w2c)
            pixels = uv.round().long()
            grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0]
            assert grown[pixels[:, 1], pixels[:, 0]].all()  # within a pixel of the mask
            nearest = -torch.nn.functional.max_pool2d(-depth[None, None], 3, 1, 1)[0, 0]
            background = torch.nn.functional.max_pool2d((~mask)[None, None].float(), 3, 1, 1)
            inner = (background[0, 0] < 0.5)[pixels[:, 1], pixels[:, 0]]  # 3x3 all object
            assert ((z - nearest[pixels[:, 1], pixels[:, 0]]) / z)[inner].min() > -5e-3
            # Seen points: bracketed by their 3x3 pixels' depths (hidden ones lie beyond them).
            farthest = torch.nn.functional.max_pool2d(depth[None, None], 3, 1, 1)[0, 0]
            seen.append((z <= farthest[pixels[:, 1], pixels[:, 0]] * 1.002)[inner].float().mean())
        assert min(seen) > 0.2 and sum(seen) / len(seen) > 0.35  # a box shows 1-3 of 6 faces


def test_extra_keys_are_ignored(root):
    expected, _ = read_category(root, "box")
    frames = _frames(root)
    for frame in frames:
        frame["extra"] = {"anything": [1, 2]}
        for key in ("image", "depth", "mask", "viewpoint", "meta"):
            frame[key]["extra_" + key] = "ignored"
    write_jgz(root / "box" / "frame_annotations.jgz", frames)
    sequences = read_jgz(root / "box" / "sequence_annotations.jgz")
    sequences[0]["extra"] = 1
    sequences[0]["point_cloud"]["extra"] = 2
    write_jgz(root / "box" / "sequence_annotations.jgz", sequences)
    read, report = read_category(root, "box")
    assert report.frames == 24
    assert [s.name for s in read] == [s.name for s in expected]
    assert all(s.point_cloud_path is not None for s in read)


def test_missing_files_are_skipped_and_counted(root):
    sequences, _ = read_category(root, "box")
    first, second = sequences[0].frames[2], sequences[1].frames[5]
    first.image_path.unlink()
    second.mask_path.unlink()
    sequences[2].frames[1].depth_path.unlink()
    for frame in sequences[2].frames:  # a whole sequence without images
        frame.image_path.unlink()
    read, report = read_category(root, "box")
    assert (report.frames_missing_files, report.frames_missing_mask) == (9, 1)
    assert (report.frames_missing_depth, report.sequences_without_frames) == (0, 1)
    assert (
        report.sequences == 2 and report.frames == 15 and "frames missing files: 9" in str(report)
    )
    assert 2 not in [f.frame_number for f in read[0].frames]
    frame = next(f for f in read[1].frames if f.frame_number == 5)
    assert frame.mask_path is None and frame.depth_path is not None


def test_frames_without_camera_are_dropped_and_counted(root):
    frames = _frames(root)
    frames[0]["viewpoint"] = None
    del frames[9]["viewpoint"]
    write_jgz(root / "box" / "frame_annotations.jgz", frames)
    sequences, report = read_category(root, "box")
    assert report.frames_without_viewpoint == 2 and report.frames == 22
    assert sequences[0].frames[0].frame_number == 1


def _write_and_read(root: Path, frames) -> None:
    write_jgz(root / "box" / "frame_annotations.jgz", frames)
    read_category(root, "box")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f["viewpoint"].update(R=[[1, 0, 0], [0, 1, 0]]), "viewpoint.R must be 3x3"),
        (lambda f: f["viewpoint"].update(T="up"), "viewpoint.T must be 3 numbers"),
        (lambda f: f["image"].pop("size"), "missing key 'image.size'"),
        (lambda f: f["viewpoint"].pop("focal_length"), "missing key 'viewpoint.focal_length'"),
        (lambda f: f["viewpoint"].update(intrinsics_format="ndc"), "intrinsics_format 'ndc'"),
        (lambda f: f["depth"].update(scale_adjustment=0), "depth.scale_adjustment must be"),
        (lambda f: f["image"].update(size=[72]), "image.size must be [H, W]"),
        (lambda f: f["viewpoint"].update(focal_length=[0.0, 1.0]), "focal_length must be positive"),
        (
            lambda f: f["viewpoint"].update(R=[[2, 0, 0], [0, 1, 0], [0, 0, 1]]),
            "R is not a rotation",
        ),
        (
            lambda f: f["viewpoint"].update(R=[[-1, 0, 0], [0, 1, 0], [0, 0, 1]]),
            "R is not a rotation",
        ),
    ],
)
def test_malformed_frames_name_file_and_frame(root, damage, message):
    frames = _frames(root)
    damage(frames[12])
    where = f"box/frame_annotations.jgz: frame 4 of sequence {frames[12]['sequence_name']}: "
    with pytest.raises(Co3dFormatError) as error:
        _write_and_read(root, frames)
    assert str(error.value).startswith(where) and message in str(error.value)


def test_malformed_files_are_named(root, source):
    path = root / "box" / "frame_annotations.jgz"
    frames = _frames(root)
    del frames[3]["sequence_name"]
    with pytest.raises(Co3dFormatError, match="frame_annotations.jgz: entry 3: missing key 'seq"):
        _write_and_read(root, frames)
    frames = _frames(source)
    with pytest.raises(Co3dFormatError, match="frame 0 of sequence .* is annotated twice"):
        _write_and_read(root, [*frames, frames[0]])
    path.write_bytes(b"plain text")
    with pytest.raises(Co3dFormatError, match="box/frame_annotations.jgz: not a readable gzip"):
        read_category(root, "box")
    with gzip.open(path, "wb") as stream:
        stream.write(b"{not json")
    with pytest.raises(Co3dFormatError, match="box/frame_annotations.jgz: not JSON"):
        read_category(root, "box")
    write_jgz(path, {"frames": []})
    with pytest.raises(Co3dFormatError, match="must be a JSON list"):
        read_category(root, "box")
    with pytest.raises(FileNotFoundError, match="no CO3D frame annotations for category 'cup'"):
        read_category(root, "cup")


def test_set_lists_select_frames(source):
    names = [s.name for s in read_category(source, "box")[0]]  # sets: train, test, dev
    train, report = read_category(source, "box", "fewview_dev", "train")
    assert [s.name for s in train] == [names[0]] and report.frames_not_selected == 16
    dev, _ = read_category(source, "box", "fewview_dev", "test")
    assert [s.name for s in dev] == [names[2]]
    test, _ = read_category(source, "box", "fewview_test", "test")
    assert [s.name for s in test] == [names[1]]
    unseen, _ = read_category(source, "box", "manyview_dev_0", "test")
    assert [f.frame_number for f in unseen[0].frames] == [0, 4]  # every 4th frame is unseen
    known, _ = read_category(source, "box", "manyview_dev_0", "train")
    assert [f.frame_number for f in known[0].frames] == [1, 2, 3, 5, 6, 7]
    both, _ = read_category(source, "box", "fewview_dev")
    assert [s.name for s in both] == [names[0], names[2]]
    with pytest.raises(FileNotFoundError, match="subsets of box: \\['fewview_dev'"):
        read_category(source, "box", "manyview_test_0")
    with pytest.raises(ValueError, match="has no split 'holdout'; it has \\['test', 'train'"):
        read_category(source, "box", "fewview_dev", "holdout")
    with pytest.raises(ValueError, match="needs a subset"):
        read_category(source, "box", split="train")


def test_sequences_filter_and_captions(source):
    names = [s.name for s in read_category(source, "composite")[0]]
    chosen, report = read_category(source, "composite", sequences=[names[1]])
    assert [s.name for s in chosen] == [names[1]] and report.frames_not_selected == 16
    captions = json.loads((source / "composite" / "captions.json").read_text())
    assert chosen[0].captions == tuple(captions[names[1]]) and chosen[0].captions[0]
    with pytest.raises(ValueError, match="no sequences named \\['nope'\\]"):
        read_category(source, "composite", sequences=["nope"])


def test_no_captions_file_means_no_captions(root):
    (root / "box" / "captions.json").unlink()
    assert all(s.captions == () for s in read_category(root, "box")[0])
    (root / "box" / "captions.json").write_text(json.dumps({"x": [1]}))
    with pytest.raises(Co3dFormatError, match="box/captions.json: sequence x: captions must be"):
        read_category(root, "box")


def test_depth_and_mask_encodings_round_trip(tmp_path):
    depth = np.array([[0.0, 0.5, 1.25], [3.0, 7.5, 1000.0]], dtype=np.float32)
    write_depth(tmp_path / "d.png", depth, scale=2.5)
    # CO3D's reader (pytorch3d implicitron): uint16 pixels reinterpreted as float16.
    with Image.open(tmp_path / "d.png") as image:
        bits = np.array(image, dtype=np.uint16)
    np.testing.assert_array_equal(bits.view(np.float16), (depth / 2.5).astype(np.float16))
    read = read_depth(tmp_path / "d.png", 2.5)
    assert read.dtype == torch.float32
    np.testing.assert_allclose(read.numpy(), depth, rtol=1e-3)
    mask = np.array([[0.0, 0.5], [1.0, 0.25]])
    write_mask(tmp_path / "m.png", mask)
    np.testing.assert_allclose(read_mask(tmp_path / "m.png").numpy(), mask, atol=0.5 / 255)
