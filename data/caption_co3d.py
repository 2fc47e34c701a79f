"""BLIP-2 captions of every CO3D-layout sequence -> <co3d-root>/<category>/captions.json.

    python data/caption_co3d.py --co3d-root DIR [--categories teddybear hydrant] \\
        [--model Salesforce/blip2-opt-2.7b] [--frames-per-sequence 5] [--batch-size 4] \\
        [--device cuda] [--dtype fp16] [--max-new-tokens 20] [--save-every 50] [--overwrite]

As the reference ViewDiff (data/co3d/generate_blip2_captions.py): BLIP-2 OPT-2.7b in fp16 captions
5 whole frames of each sequence, without a text prompt, one caption per frame. The reference draws
its 5 frames at random and squashes them to 512 x 512 only so that its data loader can batch them;
here they are spread evenly over the orbit and go in as stored, since the processor squashes every
image to its own input size (224 x 224) anyway. The file is ``{sequence_name: [caption, ...]}``,
what ``viewdiff.data.co3d.read_captions`` reads and the shard writer copies into each sample.

A re-run skips the sequences a captions.json already holds (``--overwrite`` captions them again);
the file is rewritten atomically every --save-every sequences, at the end of each category and when
a run stops on an error, so a crash loses at most the sequences in flight.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from viewdiff.commands.options import DTYPES, add_device_argument, positive_int
from viewdiff.data.co3d import (
    CAPTIONS,
    FRAME_ANNOTATIONS,
    Co3dFrame,
    Co3dSequence,
    list_categories,
    read_captions,
    read_category,
)
from viewdiff.data.co3d_annotations import Co3dFormatError
from viewdiff.data.shard_manifest import write_json
from viewdiff.prior.load import chosen_device

Captioner = Callable[[Sequence[Path]], list[str]]
"""Image files -> one caption each (``caption_images`` bound to a model and its processor)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--co3d-root", type=Path, required=True, help="CO3D-layout root folder")
    parser.add_argument("--categories", nargs="*", help="categories (default: all in the root)")
    parser.add_argument(
        "--model", default="Salesforce/blip2-opt-2.7b", help="BLIP-2 hub id or local folder"
    )
    parser.add_argument(
        "--frames-per-sequence", type=positive_int, default=5, help="frames captioned per sequence"
    )
    parser.add_argument("--batch-size", type=positive_int, default=4, help="images per forward")
    add_device_argument(parser)
    parser.add_argument(
        "--dtype", choices=DTYPES, help="model dtype (default: fp16 on cuda, else fp32)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=20,
        help="longest caption, in tokens (the reference ran transformers' default length, 20)",
    )
    parser.add_argument(
        "--save-every", type=positive_int, default=50, help="rewrite captions.json every N"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="caption sequences that already have captions"
    )
    args = parser.parse_args(argv)
    try:
        args.device = chosen_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.dtype is None:
        args.dtype = "fp16" if torch.device(args.device).type == "cuda" else "fp32"
    return args


def fail(message: str) -> None:
    """Exit 2 with one line naming the problem."""
    print(f"caption_co3d.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def spread_frames(frames: Sequence[Co3dFrame], count: int) -> list[Co3dFrame]:
    """``count`` frames spread evenly over the sequence (all of them when it has no more)."""
    if len(frames) <= count:
        return list(frames)
    # The middles of ``count`` equal parts: a turntable's first and last frames are neighbours.
    return [frames[int((i + 0.5) * len(frames) / count)] for i in range(count)]


def load_image(path: Path) -> Image.Image:
    """The RGB image of a frame; an unreadable file raises an error naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise Co3dFormatError(f"{path}: cannot read the image ({error})") from None


def load_blip2(name: str, device: str, dtype: torch.dtype) -> tuple:
    """BLIP-2's (model, processor) from a hub id or a local folder, in eval mode on ``device``."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    processor = Blip2Processor.from_pretrained(name)
    model = Blip2ForConditionalGeneration.from_pretrained(name, dtype=dtype)
    return model.to(device).eval(), processor


@torch.inference_mode()
def caption_images(model, processor, paths: Sequence[Path], max_new_tokens: int) -> list[str]:
    """BLIP-2's caption of each image, without a text prompt as in the reference; stripped."""
    inputs = processor(images=[load_image(p) for p in paths], return_tensors="pt")
    inputs = inputs.to(model.device, model.dtype)  # casts pixel_values only
    token_ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return [text.strip() for text in processor.batch_decode(token_ids, skip_special_tokens=True)]


def caption_sequences(
    caption: Captioner,
    sequences: Sequence[Co3dSequence],
    frames_per_sequence: int,
    batch_size: int,
    progress: tqdm | None = None,
) -> Iterator[tuple[str, list[str]]]:
    """Yield each sequence's (name, non-empty captions) once all its frames are captioned;
    batches span sequences so that every forward is full."""
    jobs = [
        (sequence.name, frame.image_path)
        for sequence in sequences
        for frame in spread_frames(sequence.frames, frames_per_sequence)
    ]
    remaining = Counter(name for name, _ in jobs)
    texts_of: dict[str, list[str]] = {}
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        texts = caption([path for _, path in batch])
        if len(texts) != len(batch):
            raise RuntimeError(f"the captioner gave {len(texts)} captions for {len(batch)} images")
        if progress is not None:
            progress.update(len(batch))
        for (name, _), text in zip(batch, texts, strict=True):
            texts_of.setdefault(name, [])
            if text.strip():  # BLIP-2 may stop at once: an empty caption is no caption
                texts_of[name].append(text.strip())
            remaining[name] -= 1
            if remaining[name] == 0:
                yield name, texts_of.pop(name)


@dataclass
class CategoryPlan:
    """One category's captions.json as it stands, and the sequences still to caption."""

    category: str
    captions: dict[str, list[str]]
    todo: list[Co3dSequence]
    skipped: int  # sequences that keep the captions they have


def plan_category(root: Path, category: str, overwrite: bool) -> CategoryPlan:
    """What to caption in ``category``: every sequence with frames, less those already done."""
    captions = {name: list(texts) for name, texts in read_captions(root, category).items()}
    sequences, _ = read_category(root, category)
    todo = [s for s in sequences if overwrite or s.name not in captions]
    return CategoryPlan(category, captions, todo, len(sequences) - len(todo))


def write_captions(root: Path, category: str, captions: dict[str, list[str]]) -> None:
    """Rewrite ``<root>/<category>/captions.json`` atomically (temporary file, then rename)."""
    write_json(Path(root) / category / CAPTIONS, dict(sorted(captions.items())))


def caption_category(
    caption: Captioner,
    root: Path,
    plan: CategoryPlan,
    frames_per_sequence: int,
    batch_size: int,
    save_every: int,
    progress: tqdm | None = None,
) -> None:
    """Caption ``plan.todo`` into ``plan.captions``, writing the file every ``save_every``
    sequences, at the end, and on an error (what was captioned before it is kept)."""
    unsaved = 0
    try:
        for name, texts in caption_sequences(
            caption, plan.todo, frames_per_sequence, batch_size, progress
        ):
            # A sequence whose captions all came out empty is kept as done with []: the loader
            # then prompts "a <category>", and greedy decoding would give the same again.
            plan.captions[name] = texts
            unsaved += 1
            if unsaved == save_every:
                write_captions(root, plan.category, plan.captions)
                unsaved = 0
    finally:
        if unsaved:
            write_captions(root, plan.category, plan.captions)


def main(argv: list[str] | None = None) -> dict:
    """Write the captions; print and return a summary (exit 2 on bad input)."""
    args = parse_args(argv)
    try:
        categories = list_categories(args.co3d_root)
    except FileNotFoundError as error:
        fail(str(error))
    if not categories:
        fail(f"--co3d-root {args.co3d_root}: no category folder with a {FRAME_ANNOTATIONS}")
    missing = sorted(set(args.categories or []) - set(categories))
    if missing:
        fail(
            f"--categories: {', '.join(missing)} not in {args.co3d_root} ({', '.join(categories)})"
        )
    # Every annotation and captions.json is read before the model loads: bad input fails fast.
    try:
        plans = [
            plan_category(args.co3d_root, category, args.overwrite)
            for category in (args.categories or categories)
        ]
    except (Co3dFormatError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    images = sum(
        len(spread_frames(s.frames, args.frames_per_sequence)) for p in plans for s in p.todo
    )
    if images:
        try:
            model, processor = load_blip2(args.model, args.device, DTYPES[args.dtype])
        except (OSError, ValueError) as error:
            fail(f"--model {args.model}: {error}")
        caption = functools.partial(
            caption_images, model, processor, max_new_tokens=args.max_new_tokens
        )
        with tqdm(total=images, unit="image", desc="BLIP-2 captions") as progress:
            for plan in plans:
                progress.set_postfix(category=plan.category)
                try:
                    caption_category(
                        caption, args.co3d_root, plan, args.frames_per_sequence,
                        args.batch_size, args.save_every, progress,
                    )  # fmt: skip
                except Co3dFormatError as error:
                    fail(str(error))
    summary = {
        "captioned": sum(len(p.todo) for p in plans),
        "skipped": sum(p.skipped for p in plans),
        "images": images,
        "categories": {p.category: len(p.todo) + p.skipped for p in plans},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
