"""``infer.py eval``: image-conditional novel views on held-out shards, PSNR and SSIM."""

import dataclasses
import json
import math

import pytest
import torch
from PIL import Image

import viewdiff.commands.generation as generation
import viewdiff.commands.infer as infer
from viewdiff.config import DataConfig, SampleConfig
from viewdiff.inference import heldout


def data(shards, n_views=3) -> DataConfig:
    return DataConfig(shards=str(shards), image_size=64, n_views=n_views, num_workers=0,
                      shuffle_buffer=1)  # fmt: skip


def test_eval_writes_metrics_per_object_and_their_mean(tiny_export, heldout_shards, tmp_path,
                                                       capsys):  # fmt: skip
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(tiny_export), "--shards", str(heldout_shards)]
    assert infer.main([*argv, "--known", "1", "--steps", "1", "--out", str(out)]) == 0
    document = json.loads((out / "eval.json").read_text())
    assert document["settings"]["known"] == 1 and document["settings"]["n_views"] == 3
    objects = document["objects"]
    assert len(objects) == 2 and {o["category"] for o in objects} == {"box", "ball"}
    for result in objects:
        assert len(result["known_frames"]) == 1 and len(result["generated_frames"]) == 2
        for name in ("psnr", "ssim", "psnr_masked", "ssim_masked"):
            assert len(result["views"][name]) == 2
            assert all(math.isfinite(value) for value in result["views"][name])
        assert 0 < result["mean"]["psnr"] < 30  # a random model: far from the truth
    mean = sum(o["mean"]["psnr"] for o in objects) / 2
    assert document["mean"]["psnr"] == pytest.approx(mean)
    printed = capsys.readouterr().out
    assert "mean of 2 objects" in printed and "psnr_masked" in printed
    pictures = sorted((out / "compare").glob("*.png"))
    assert len(pictures) == 2 and Image.open(pictures[0]).size == (3 * 64, 2 * 64)


def test_generated_views_are_compared_with_the_true_views_at_their_cameras(
    prior, heldout_shards, tmp_path, monkeypatch
):
    """A generator that returns the truth scores perfectly: the bookkeeping lines up."""
    config = data(heldout_shards, n_views=4)
    truth = {o["key"]: o for o in heldout.heldout_objects(config, seed=0, max_objects=None)}

    def perfect(prior, prompts, targets, settings, seeds, given_images, given_cameras, **kw):
        (sample,) = [o for o in truth.values() if torch.equal(o["images"][:2], given_images)]
        torch.testing.assert_close(targets.w2c, sample["w2c"][2:])  # the true cameras
        torch.testing.assert_close(given_cameras.K, sample["K"][:2])
        assert prompts == [sample["prompt"]]
        return sample["images"][None, 2:]

    monkeypatch.setattr(heldout, "generate_views", perfect)
    results = heldout.evaluate_heldout(prior, config, 2, SampleConfig(), tmp_path, max_objects=1)
    assert len(results) == 1
    assert all(math.isinf(value) for value in results[0].views["psnr"])
    assert results[0].views["ssim"] == pytest.approx([1.0, 1.0])
    assert results[0].known_frames == truth[results[0].key]["frame_numbers"][:2].tolist()


def test_eval_refuses_bad_shards_and_known_counts_before_any_compute(
    tiny_export, heldout_shards, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(generation, "load_export", lambda *a, **k: pytest.fail("model loaded"))
    argv = ["eval", "--checkpoint", str(tiny_export), "--out", str(tmp_path)]
    for extra, message in [
        (["--shards", str(heldout_shards), "--known", "3"], "--known must be in [0, 3)"),
        (["--shards", str(tmp_path / "none-{0..1}.tar")], "shard not found: "),
        (["--shards", str(heldout_shards), "--categories", "car"], "no category ['car']"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            infer.main([*argv, *extra])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be in \\[0, 4\\)"):
        heldout.evaluate_heldout(None, data(heldout_shards, 4), 4, SampleConfig(), tmp_path)
    assert dataclasses.replace(SampleConfig(), seed=1).seed == 1
