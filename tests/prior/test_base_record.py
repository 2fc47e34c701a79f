"""base_model.json: a local base is recorded by path and fingerprint, found again, or refused."""

import json
import shutil

import pytest

from viewdiff.prior.base_record import (
    SAMPLED_BYTES,
    base_fingerprint,
    base_parts,
    base_record,
    locate_base,
)

PARTS = base_parts("none")  # text_encoder, tokenizer, vae, unet


def flip_byte(path, offset: int) -> None:
    """Change one byte of a file in place (its size stays)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_fingerprint_is_of_the_loaded_parts_sampled_where_files_are_large(tiny_sd, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd, copy)
    original = base_fingerprint(tiny_sd, PARTS)
    assert base_fingerprint(copy, PARTS) == original  # a copy is the same base, wherever it is
    # What the export does not load, or hidden files, do not count.
    (copy / "model_index.json").write_text("{}")
    (copy / "scheduler" / "scheduler_config.json").write_text("{}")
    (copy / "vae" / ".cache").write_text("anything")
    assert base_fingerprint(copy, PARTS) == original
    assert base_fingerprint(copy, base_parts("full")) != original  # the UNet left out
    # A large weight file (over 2 MiB) counts by its size, first and last MiB.
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    assert size > 2 * SAMPLED_BYTES
    data = weights.read_bytes()
    flip_byte(weights, size // 2)
    assert base_fingerprint(copy, PARTS) == original  # not read: the middle of a large file
    for offset in (100, size - 100):
        weights.write_bytes(data)
        flip_byte(weights, offset)
        assert base_fingerprint(copy, PARTS) != original
    weights.write_bytes(data)
    # A small file (configs, tokenizer, small weights) counts with every byte.
    vae = copy / "vae" / "diffusion_pytorch_model.safetensors"
    flip_byte(vae, vae.stat().st_size // 2)
    assert base_fingerprint(copy, PARTS) != original
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(ValueError, match="tokenizer: missing"):
        base_fingerprint(copy, PARTS)


def test_a_hub_base_is_its_id_and_revision(tmp_path):
    record = base_record("stabilityai/stable-diffusion-2-1-base", "abc123", tmp_path, "lora")
    assert record == {"pretrained_model": "stabilityai/stable-diffusion-2-1-base",
                      "revision": "abc123"}  # fmt: skip
    assert locate_base(tmp_path, record) == "stabilityai/stable-diffusion-2-1-base"


def test_a_local_base_is_found_beside_the_export_then_at_its_path_else_refused(tiny_sd, tmp_path):
    base, export = tmp_path / "bases" / "sd", tmp_path / "runs" / "model"
    shutil.copytree(tiny_sd, base)
    export.mkdir(parents=True)
    record = json.loads(json.dumps(base_record(str(base), None, export, "none")))
    assert record["pretrained_model_from_export"] == "../../bases/sd"
    assert record["pretrained_model_path"] == str(base.resolve())
    assert record["pretrained_model_hash"]["parts"] == list(PARTS)
    assert locate_base(export, record) == str(base)
    # Moved together: found beside the export, though the old path is gone.
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "runs", moved / "runs")
    shutil.move(tmp_path / "bases", moved / "bases")
    assert locate_base(moved / "runs" / "model", record) == str(moved / "bases" / "sd")
    # A different base beside it: not taken; the one at the recorded path is.
    shutil.copytree(moved / "bases" / "sd", base)
    flip_byte(moved / "bases" / "sd" / "unet" / "config.json", 5)
    assert locate_base(moved / "runs" / "model", record) == str(base.resolve())
    # Only differing folders: refused, naming them; an override is taken with a warning.
    flip_byte(base / "vae" / "config.json", 5)
    with pytest.raises(ValueError, match=r"base_model.json: the base model at .*moved/bases/sd"):
        locate_base(moved / "runs" / "model", record)
    with pytest.warns(UserWarning, match="not the one the export was trained from"):
        assert locate_base(moved / "runs" / "model", record, override=base) == str(base)
    # Found nowhere: refused, with what to do.
    shutil.rmtree(base)
    shutil.rmtree(moved / "bases")
    with pytest.raises(ValueError, match="is neither at .* nor at .*; pass its folder with --base"):
        locate_base(moved / "runs" / "model", record)
    with pytest.raises(ValueError, match="not a folder"):
        locate_base(moved / "runs" / "model", record, override=tmp_path / "nothing")
