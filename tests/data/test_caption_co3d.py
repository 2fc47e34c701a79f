"""data/caption_co3d.py on a tiny random BLIP-2 built offline: captions.json for every sequence in
read_captions' layout, resuming, a crash that keeps what was written, errors that name the input."""

import importlib.util
import json
import shutil
import string
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    GPT2Tokenizer,
    OPTConfig,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from viewdiff.data.co3d import read_captions, read_category
from viewdiff.data.synthetic import make_synthetic_dataset

SCRIPT = Path(__file__).parents[2] / "data" / "caption_co3d.py"
CATEGORIES = ["ball", "box"]  # 3 sequences of 4 frames each


def _load_script():
    spec = importlib.util.spec_from_file_location("caption_co3d", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


caption_co3d = _load_script()


@pytest.fixture(scope="module")
def blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BLIP-2 (ViT, Q-Former and OPT of width 16, one layer each) and its processor:
    a byte-level BPE tokenizer of the 26 letters and OPT's special tokens, 32 px images."""
    folder = tmp_path_factory.mktemp("tiny-blip2")
    vocab = {
        token: i for i, token in enumerate(["</s>", "<pad>", "<unk>", *string.ascii_lowercase])
    }
    vocab["Ġ"] = len(vocab)  # the byte-level space
    tokenizer = GPT2Tokenizer(
        vocab=vocab, merges=[], bos_token="</s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>",
    )  # fmt: skip
    images = BlipImageProcessorPil(size={"height": 32, "width": 32})
    processor = Blip2Processor(images, tokenizer, num_query_tokens=4)  # adds the <image> token
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    text = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=16, word_embed_proj_dim=16, ffn_dim=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )  # fmt: skip
    layers = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    config = Blip2Config(
        vision_config={**layers, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        qformer_config={**layers, "num_attention_heads": 2, "encoder_hidden_size": 16},
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=image_token,
    )
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    # Letters only, never an early end (every caption is a word of --max-new-tokens letters):
    # the logit of a token is its (tied) embedding times the last hidden state, so a zero
    # embedding scores 0 and loses to the best of 26 random letters. (Blip2's generate uses the
    # OPT's own generation config, rebuilt from text_config, so suppress_tokens would not last.)
    with torch.no_grad():
        model.get_input_embeddings().weight[[0, 1, 2, vocab["Ġ"], image_token]] = 0.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic CO3D-layout captures without captions.json (the synthetic writer adds one)."""
    root = make_synthetic_dataset(
        tmp_path_factory.mktemp("co3d"), CATEGORIES, 3, 4, (32, 24), seed=0, points=50
    )
    for category in CATEGORIES:
        (root / category / "captions.json").unlink()
    return root


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy that a test may caption and damage."""
    return Path(shutil.copytree(source, tmp_path / "co3d"))


def _sequence_names(root: Path, category: str) -> list[str]:
    return [s.name for s in read_category(root, category)[0]]


def _count_generate(monkeypatch, fail_on_call: int = 0, before_failing=None) -> list[int]:
    """Count BLIP-2's generate calls (batch sizes); raise on call ``fail_on_call`` (1-based)."""
    calls: list[int] = []
    generate = Blip2ForConditionalGeneration.generate

    def counted(self, pixel_values, **kwargs):
        calls.append(len(pixel_values))
        if len(calls) == fail_on_call:
            if before_failing is not None:
                before_failing()
            raise RuntimeError("CUDA out of memory (simulated)")
        return generate(self, pixel_values, **kwargs)

    monkeypatch.setattr(Blip2ForConditionalGeneration, "generate", counted)
    return calls


def _argv(root: Path, model: Path, *extra: str) -> list[str]:
    return ["--co3d-root", str(root), "--model", str(model), "--device", "cpu",
            "--frames-per-sequence", "3", "--max-new-tokens", "3", *extra]  # fmt: skip


def test_spread_frames_cover_the_orbit():
    assert caption_co3d.spread_frames(list(range(10)), 5) == [1, 3, 5, 7, 9]
    assert caption_co3d.spread_frames(list(range(100)), 3) == [16, 50, 83]
    assert caption_co3d.spread_frames(list(range(3)), 5) == [0, 1, 2]


def test_every_sequence_is_captioned_then_skipped(root, blip2, monkeypatch, capsys):
    calls = _count_generate(monkeypatch)
    summary = caption_co3d.main(_argv(root, blip2, "--batch-size", "4"))
    assert summary == {"captioned": 6, "skipped": 0, "images": 18,
                       "categories": {"ball": 3, "box": 3}}  # fmt: skip
    assert calls == [4, 4, 1] * 2  # 3 of the 4 frames of 3 sequences, per category
    for category in CATEGORIES:
        captions = read_captions(root, category)
        assert sorted(captions) == _sequence_names(root, category)
        for texts in captions.values():
            assert len(texts) == 3
            assert all(t and t == t.strip() and len(t) <= 3 for t in texts)
    written = {c: (root / c / "captions.json").read_bytes() for c in CATEGORIES}
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == summary

    # A re-run has nothing to do: no model call, the files untouched.
    calls.clear()
    assert caption_co3d.main(_argv(root, blip2))["skipped"] == 6
    assert calls == []
    assert all((root / c / "captions.json").read_bytes() == written[c] for c in CATEGORIES)

    # One sequence lost its captions: only it is captioned; other entries are kept as they are.
    path = root / "box" / "captions.json"
    document = json.loads(path.read_text())
    dropped = sorted(document)[1]
    del document[dropped]
    document["hand_written"] = ["a box, by hand"]
    path.write_text(json.dumps(document))
    assert caption_co3d.main(_argv(root, blip2))["captioned"] == 1
    assert calls == [3]
    captions = read_captions(root, "box")
    assert list(captions[dropped]) == json.loads(written["box"])[dropped]  # greedy: the same
    assert captions["hand_written"] == ("a box, by hand",)

    calls.clear()
    summary = caption_co3d.main(_argv(root, blip2, "--overwrite", "--batch-size", "9"))
    assert summary["captioned"] == 6
    assert calls == [9, 9]
    assert read_captions(root, "box")["hand_written"] == ("a box, by hand",)


def test_a_crash_keeps_what_was_written(root, blip2, monkeypatch):
    seen_before_crash = {}

    def look():  # what a reader finds on disk while the third batch runs
        seen_before_crash.update(read_captions(root, "ball"))

    calls = _count_generate(monkeypatch, fail_on_call=3, before_failing=look)
    argv = _argv(root, blip2, "--batch-size", "3", "--save-every", "1")
    with pytest.raises(RuntimeError, match="simulated"):
        caption_co3d.main(argv)
    first_two = _sequence_names(root, "ball")[:2]
    assert sorted(seen_before_crash) == first_two  # written one sequence at a time
    document = json.loads((root / "ball" / "captions.json").read_text())  # valid JSON
    assert sorted(document) == first_two
    assert not (root / "box" / "captions.json").exists()
    assert not list(root.glob("*/.*partial"))

    # The next run captions the rest only, and keeps the captions written before the crash.
    calls = _count_generate(monkeypatch)
    assert caption_co3d.main(argv)["captioned"] == 4
    assert calls == [3] * 4  # the third ball sequence, then box's three
    captions = read_captions(root, "ball")
    assert {name: list(captions[name]) for name in first_two} == document
    assert sorted(captions) == _sequence_names(root, "ball")


def test_a_crash_without_periodic_saves_still_writes_finished_sequences(root, blip2, monkeypatch):
    _count_generate(monkeypatch, fail_on_call=2)
    with pytest.raises(RuntimeError):
        caption_co3d.main(_argv(root, blip2, "--batch-size", "3"))  # --save-every 50
    assert sorted(read_captions(root, "ball")) == _sequence_names(root, "ball")[:1]


def test_empty_captions_are_dropped(source):
    sequences = read_category(source, "ball")[0]
    batches = []

    def caption(paths):
        batches.append(paths)
        return ["  a red ball \n", "", "   "][: len(paths)]

    result = dict(caption_co3d.caption_sequences(caption, sequences, 3, 3))
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)
    assert result == {s.name: ["a red ball"] for s in sequences}
    with pytest.raises(RuntimeError, match="2 captions for 3 images"):
        list(caption_co3d.caption_sequences(lambda p: ["a", "b"], sequences, 3, 3))


@pytest.mark.parametrize(
    "case", ["missing root", "root is a file", "no categories", "unknown category", "bad json"]
)
def test_bad_input_names_it(case, root, tmp_path, monkeypatch, capsys):
    calls = _count_generate(monkeypatch)
    target, extra, message = {
        "missing root": (tmp_path / "nowhere", [], f"CO3D root not found: {tmp_path / 'nowhere'}"),
        "root is a file": (root / "ball" / "frame_annotations.jgz", [], "CO3D root not found"),
        "no categories": (tmp_path / "empty", [], "no category folder with a frame_annotations"),
        "unknown category": (root, ["--categories", "box", "plane"], "--categories: plane not in"),
        "bad json": (root, [], "box/captions.json: not JSON"),
    }[case]
    (tmp_path / "empty").mkdir()
    (root / "box" / "captions.json").write_text("{" if case == "bad json" else "{}")
    with pytest.raises(SystemExit) as exit_info:
        # A missing model: bad input is found before any model loads.
        caption_co3d.main(_argv(target, tmp_path / "no-model", *extra))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error, error
    assert calls == []
