"""Scene checkpoints: a round trip is bit-exact, an interrupted write is recovered, a failed one
leaves the old checkpoint, and every missing or damaged file is a ValueError naming it."""

import json
import re

import pytest
import torch

from viewdiff.atomic_folder import old_path, staging_path
from viewdiff.scene.checkpoint import (
    SCENE_FILE,
    STATE_FILE,
    TENSORS_FILE,
    read_checkpoint,
    read_checkpoint_state,
    write_checkpoint,
)
from viewdiff.scene.gaussians import GaussianScene

FORMAT, WHAT = "viewdiff.test-state/1", "a test checkpoint"


def _contents(seed: int) -> tuple[GaussianScene, dict[str, torch.Tensor], dict]:
    generator = torch.Generator().manual_seed(seed)
    scene = GaussianScene.random_in_sphere(50, 0.5, sh_degree=1, generator=generator)
    tensors = {
        "moments": torch.randn(50, 3, generator=generator),
        "generator": generator.get_state(),  # uint8
        "counts": torch.arange(7, dtype=torch.int64),
    }
    return scene, tensors, {"step": seed, "prompt": "a red ball", "nested": {"a": [1, 2.5]}}


def _write(folder, seed: int = 0):
    return write_checkpoint(folder, FORMAT, *_contents(seed))


def test_a_round_trip_gives_back_every_bit(tmp_path):
    scene, tensors, state = _contents(3)
    folder = write_checkpoint(tmp_path / "checkpoint", FORMAT, scene, tensors, state)
    checkpoint = read_checkpoint(folder, FORMAT, WHAT)
    for name, value in scene.tensors().items():
        assert torch.equal(checkpoint.scene.tensors()[name], value), name
    assert checkpoint.tensors.keys() == tensors.keys()
    for name, value in tensors.items():
        loaded = checkpoint.tensors[name]
        assert loaded.dtype == value.dtype and torch.equal(loaded, value), name
    assert dict(checkpoint.state) == {"format": FORMAT, **state}
    assert json.loads((folder / STATE_FILE).read_text())["format"] == FORMAT
    # Writing again replaces the folder whole and leaves nothing beside it.
    _write(folder, seed=4)
    assert read_checkpoint(folder, FORMAT, WHAT).state["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_swap_cut_between_its_renames_is_recovered_by_the_reader(tmp_path):
    folder = _write(tmp_path / "checkpoint", seed=1)
    _write(tmp_path / "newer", seed=2).rename(staging_path(folder))  # complete, not swapped in
    folder.rename(old_path(folder))  # the kill fell between the two renames
    assert read_checkpoint_state(folder, FORMAT, WHAT)["step"] == 1
    assert not staging_path(folder).exists() and not old_path(folder).exists()


def test_a_write_that_fails_leaves_the_old_checkpoint(tmp_path):
    folder = _write(tmp_path / "checkpoint", seed=1)
    scene, tensors, state = _contents(2)
    with pytest.raises(TypeError):
        write_checkpoint(folder, FORMAT, scene, tensors, {**state, "bad": object()})
    assert read_checkpoint(folder, FORMAT, WHAT).state["step"] == 1
    assert not staging_path(folder).exists()


@pytest.mark.parametrize("name", [SCENE_FILE, TENSORS_FILE, STATE_FILE])
def test_a_missing_file_is_named(tmp_path, name):
    folder = _write(tmp_path / "checkpoint")
    (folder / name).unlink()
    with pytest.raises(ValueError, match=f"is not {WHAT}: missing {name}"):
        read_checkpoint(folder, FORMAT, WHAT)


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        pytest.param(SCENE_FILE, lambda data: data[: len(data) // 2], id="ply-truncated"),
        pytest.param(SCENE_FILE, lambda data: b"\x00garbage" + data, id="ply-garbage"),
        pytest.param(TENSORS_FILE, lambda data: data[: len(data) // 2], id="tensors-truncated"),
        pytest.param(TENSORS_FILE, lambda data: b"\xff" * len(data), id="tensors-garbage"),
        pytest.param(STATE_FILE, lambda data: data[:-5], id="json-truncated"),
        pytest.param(
            STATE_FILE,
            lambda data: data.replace(FORMAT.encode(), b"viewdiff.other/1"),
            id="json-of-another-format",
        ),
    ],
)
def test_a_damaged_file_is_named(tmp_path, name, damage):
    folder = _write(tmp_path / "checkpoint")
    path = folder / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_checkpoint(folder, FORMAT, WHAT)


def test_a_missing_tensor_or_field_is_named(tmp_path):
    checkpoint = read_checkpoint(_write(tmp_path / "checkpoint"), FORMAT, WHAT)
    tensors, state = checkpoint.folder / TENSORS_FILE, checkpoint.folder / STATE_FILE
    with pytest.raises(ValueError, match=re.escape(f"{tensors}: no 'x_tgt'")):
        checkpoint.tensors["x_tgt"]
    with pytest.raises(ValueError, match=re.escape(f"{state}: no 'position'")):
        checkpoint.state["position"]
    assert checkpoint.tensors.get("x_tgt") is None and "moments" in checkpoint.tensors
