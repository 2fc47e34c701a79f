"""Offline, seeded Stable Diffusion 2.1-shaped pipelines for tests and CPU benchmarks.

`build_tiny_pipeline` writes a folder that `StableDiffusionPipeline.from_pretrained` loads with
HF_HUB_OFFLINE=1: randomly initialised UNet, VAE and CLIP text encoder, a byte-level CLIP BPE
tokenizer generated from an embedded word list, and SD 2.1 base's noise schedule. Nothing is
downloaded. Every size keeps SD 2.1's block layout, so module names such as
`down_blocks.1.attentions.0` mean the same thing in the tiny model as in the real one.

The SD 2.1 base configs under `viewdiff/assets/sd21_base/` are copied from
`stabilityai/stable-diffusion-2-1-base` (unet/, vae/ and scheduler/ config files, minus
`_name_or_path`); the VAE's `scaling_factor` (0.18215) is diffusers' default, written out.

    python -m viewdiff.tiny OUT_DIR [--size tiny|mid] [--seed 0]   (viewdiff.commands.tiny)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.utils import logging as transformers_logging

Size = Literal["tiny", "toy", "mid"]

# Per-size overrides on top of the SD 2.1 base configs. `attention_head_dim` is, as in SD 2.x,
# diffusers' legacy name for the number of heads: tiny uses 16-dim heads, mid SD's 64-dim ones.
_UNET_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": [32, 32, 48, 48],
        "attention_head_dim": [2, 2, 3, 3],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "sample_size": 8,  # 64 px images
    },
    # The toy world's base (viewdiff.toy): small enough to pretrain from scratch on 2 CPU cores.
    "toy": {
        "block_out_channels": [32, 64, 96, 96],
        "attention_head_dim": [2, 4, 6, 6],
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "cross_attention_dim": 64,
        "sample_size": 8,  # 64 px images
    },
    "mid": {
        "block_out_channels": [64, 128, 256, 256],
        "attention_head_dim": [1, 2, 4, 4],
        "layers_per_block": 2,  # as SD 2.1: same module names, a fifth of the width
        "norm_num_groups": 32,
        "cross_attention_dim": 256,
        "sample_size": 16,  # 128 px images
    },
}
# Four blocks keep the real 8x downsampling factor; only the widths shrink.
_VAE_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": [8, 16, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    "toy": {
        "block_out_channels": [16, 32, 64, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    "mid": {
        "block_out_channels": [32, 64, 128, 128],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "sample_size": 128,
    },
}
_TEXT_HEADS = 4
_TEXT_LAYERS = 2
_MAX_TOKENS = 77  # CLIP's context length; the pipeline pads prompts to it.

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# The tokenizer learns one merge chain per word, so captions built from these come out as
# whole-word tokens, as they would with the real CLIP vocabulary.
_TOKENIZER_TEXT = """
a an the of on in with and photo picture render view image object from front back side top
left right red green blue yellow orange purple pink brown black white gray grey can cup mug
bottle chair table car bear teddy hydrant apple ball book box plant toy bench bicycle stripe
striped wooden metal plastic small large cyan spots slab to
"""
SIZES = tuple(sorted(_UNET_SIZES))
"""The sizes ``build_tiny_pipeline`` builds."""


def _load_asset(relative: str) -> dict[str, Any]:
    # One segment per joinpath: Traversable.joinpath takes several only from Python 3.11 on.
    text = resources.files("viewdiff").joinpath("assets").joinpath(relative).read_text()
    # `_class_name` / `_diffusers_version` are file metadata, not constructor arguments.
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def sd21_base_unet_config() -> dict[str, Any]:
    """Return the UNet config of stabilityai/stable-diffusion-2-1-base."""
    return _load_asset("sd21_base/unet/config.json")


def sd21_base_vae_config() -> dict[str, Any]:
    """Return the VAE config of stabilityai/stable-diffusion-2-1-base."""
    return _load_asset("sd21_base/vae/config.json")


def sd21_base_scheduler_config() -> dict[str, Any]:
    """Return the noise-schedule config of stabilityai/stable-diffusion-2-1-base."""
    return _load_asset("sd21_base/scheduler/scheduler_config.json")


def unet_config(size: Size = "tiny") -> dict[str, Any]:
    """Return the UNet config for `size`: SD 2.1 base's layout with smaller widths."""
    return {**sd21_base_unet_config(), **_UNET_SIZES[size]}


def vae_config(size: Size = "tiny") -> dict[str, Any]:
    """Return the VAE config for `size`: SD 2.1 base's layout with smaller widths."""
    return {**sd21_base_vae_config(), **_VAE_SIZES[size]}


def text_encoder_config(size: Size, vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextConfig:
    """Return a small CLIP text config whose width is the UNet's cross-attention dim."""
    hidden = _UNET_SIZES[size]["cross_attention_dim"]
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        projection_dim=hidden,
        num_hidden_layers=_TEXT_LAYERS,
        num_attention_heads=_TEXT_HEADS,
        max_position_embeddings=_MAX_TOKENS,
        hidden_act="gelu",  # SD 2.x's OpenCLIP ViT-H text tower
        bos_token_id=bos_id,
        # The pooled output looks this id up; the legacy value 2 would mean "argmax id" instead.
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def build_unet(config: dict[str, Any], seed: int = 0) -> UNet2DConditionModel:
    """Build a randomly initialised UNet from a config dict, seeded."""
    # fork_rng keeps the caller's global RNG untouched; devices=[] as we initialise on the CPU.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel.from_config(config)


def build_vae(config: dict[str, Any], seed: int = 0) -> AutoencoderKL:
    """Build a randomly initialised VAE from a config dict, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL.from_config(config)


def build_text_encoder(config: CLIPTextConfig, seed: int = 0) -> CLIPTextModel:
    """Build a randomly initialised CLIP text encoder, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode character, as GPT-2 and CLIP do."""
    # Printable latin-1 bytes stand for themselves; the rest are shifted past 255 so that no
    # token ever contains whitespace or control characters.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    mapping.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return dict(sorted(mapping.items()))


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn byte-level BPE merges: most frequent pair first, ties broken alphabetically."""
    byte_chars = bytes_to_unicode()
    corpus: Counter[tuple[str, ...]] = Counter()
    for word in words:
        chars = [byte_chars[b] for b in word.encode("utf-8")]
        word_symbols = (*chars[:-1], chars[-1] + "</w>")  # the word's last symbol ends it
        corpus[word_symbols] += 1
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in corpus.items():
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, count in corpus.items():
            merged[_merge_pair(symbols, best)] += count
        corpus = merged


def write_tokenizer(out_dir: str | Path) -> dict[str, int]:
    """Write a byte-level CLIP tokenizer (vocab.json, merges.txt, config); return its vocab."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(_TOKENIZER_TEXT.split())
    # CLIP's vocab order: bytes, bytes ending a word, merge results, then the special tokens.
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges)]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    # dict.fromkeys drops a merge result that spells an existing token (the BPE model needs
    # each token once); the merge itself stays in merges.txt.
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    _write_json(out / "vocab.json", vocab)
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (out / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": _MAX_TOKENS,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    _write_json(out / "tokenizer_config.json", config)
    return vocab


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def _model_index(components: dict[str, Any]) -> dict[str, Any]:
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "requires_safety_checker": False,
    }
    for name, module in components.items():
        library = type(module).__module__.split(".")[0]
        index[name] = [library, type(module).__name__]
    # The tokenizer is written as files rather than saved from an object. In transformers 5,
    # CLIPTokenizer is the tokenizers-backed class (CLIPTokenizerFast is an alias of it).
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    # [null, null] marks an optional component as absent: the loader then passes None.
    for name in ("safety_checker", "feature_extractor", "image_encoder"):
        index[name] = [None, None]
    return index


@contextmanager
def _no_save_progress_bar() -> Iterator[None]:
    # transformers 5 shows a "Writing model shards" bar even for one small file.
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def random_components(
    size: Size, seed: int, tokenizer_dir: str | Path
) -> tuple[dict[str, Any], dict[str, int]]:
    """Seeded random UNet, VAE, text encoder and SD 2.1's scheduler of a size; the tokenizer is
    written to ``tokenizer_dir``. Returns the components and the tokenizer's vocabulary."""
    vocab = write_tokenizer(tokenizer_dir)
    text_config = text_encoder_config(size, len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
    # Distinct seed offsets keep the three models from starting on the same random stream;
    # the UNet gets `seed` itself so that build_unet(unet_config(size), seed) reproduces it.
    components = {
        "unet": build_unet(unet_config(size), seed),
        "vae": build_vae(vae_config(size), seed + 1),
        "text_encoder": build_text_encoder(text_config, seed + 2),
        "scheduler": DDPMScheduler.from_config(sd21_base_scheduler_config()),
    }
    return components, vocab


def save_pipeline(out_dir: str | Path, components: dict[str, Any]) -> Path:
    """Save components into a Stable Diffusion folder (the tokenizer/ is already there)."""
    out = Path(out_dir)
    with _no_save_progress_bar():
        for name, module in components.items():
            module.save_pretrained(out / name)
    _write_json(out / "model_index.json", _model_index(components))
    return out


def build_tiny_pipeline(out_dir: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a seeded, randomly initialised SD 2.1-shaped pipeline folder to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    components, _ = random_components(size, seed, out / "tokenizer")
    return save_pipeline(out, components)


def count_params(weights_dir: str | Path) -> int:
    """Count the parameters stored in a folder's safetensors files, reading headers only."""
    total = 0
    for path in sorted(Path(weights_dir).glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                total += torch.Size(f.get_slice(key).get_shape()).numel()
    return total
