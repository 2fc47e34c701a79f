"""The prior preservation set (DreamBooth, Ruiz et al. 2023, as ViewDiff's reference trains).

Single images of the *base* pipeline, generated from the training captions, each with a random
camera on a sphere around the object box, written as shards in the format of
``viewdiff.data.shards`` (one view per sample) that the loader reads at N=1. Training adds a
batch of them to every step with weight ``train.prior_weight``, so that the fine-tuned model
keeps what the base model knew.

The reference (``generate_co3d_dreambooth_data.py`` and ``CO3DDreamboothDataset``) generates
2 images for each of up to 2 captions per sequence with DPM-Solver at the base model's size, and
draws a camera for every image each time it is loaded: radius in [2, 4], polar angle in [30, 90]
degrees from +z (elevation 0 to 60 above the object's equator), azimuth anywhere, focal length
in [565, 590] px at 512 px (the principal point centred). Here the camera is drawn once per
image, from the same ranges (the focal length scaled to the stored image size), and stored.

Shards are written in caption order under temporary names, renamed when complete, and listed in
``manifest.json``; a re-run keeps the complete ones (same captions and options).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from viewdiff.cameras.orbits import look_at, spherical_to_cartesian
from viewdiff.data.shard_manifest import MANIFEST, SKIP_REASONS, read_manifest, write_json
from viewdiff.data.shard_samples import SAMPLE_FORMAT
from viewdiff.data.stream import shard_urls

PRIOR_RADIUS = (2.0, 4.0)  # pose_spherical_min/max_radius
PRIOR_ELEVATION_DEG = (0.0, 60.0)  # pose_spherical_min/max_theta 30..90, measured from +z
PRIOR_FOCAL_PER_WIDTH = (565.0 / 512.0, 590.0 / 512.0)  # DEFAULT_MIN/MAX_FOCAL at 512 px
PRIOR_SPLIT = "prior"


@dataclass(frozen=True)
class PriorOptions:
    """How the prior images are generated and stored."""

    image_size: int
    """Side of the stored square images, px (the training data.image_size)."""
    images_per_caption: int = 2
    """Images generated per caption (the reference: 2)."""
    num_inference_steps: int = 25
    """DPM-Solver++ steps (the reference: the pipeline's default)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance of the base pipeline."""
    seed: int = 0
    """Seed of the images and cameras: caption i uses seed + i."""
    samples_per_shard: int = 64
    """Images per shard."""
    jpeg_quality: int = 95
    """JPEG quality of the stored images."""
    radius: tuple[float, float] = PRIOR_RADIUS
    """Range of the camera's distance to the object box centre."""
    elevation_deg: tuple[float, float] = PRIOR_ELEVATION_DEG
    """Range of the camera's elevation above the equator, degrees."""
    focal_per_width: tuple[float, float] = PRIOR_FOCAL_PER_WIDTH
    """Range of the focal length, in image widths."""


def training_captions(shards: str, image_size: int) -> list[tuple[str, str]]:
    """Every (category, caption) of the training shards' samples, once, in order of appearance
    (a sample without captions gives "a <category>", as the loader does)."""
    seen: dict[tuple[str, str], None] = {}
    for url in shard_urls(shards, image_size):
        if not Path(url).is_file():
            raise ValueError(f"{url}: prior captions are read from local shard files only")
        with tarfile.open(url) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                extracted = tar.extractfile(member)
                if extracted is None:  # a directory or special file named *.json
                    raise ValueError(f"{url}: {member.name}: not a sample's JSON (not a file)")
                try:
                    meta = json.loads(extracted.read())
                    category = meta["category"]
                    captions = meta["captions"] or [f"a {category}"]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{url}: {member.name}: not a sample's JSON ({error})"
                    ) from None
                for caption in captions:
                    seen.setdefault((category, caption), None)
    if not seen:
        raise ValueError(f"{shards}: no samples, so no captions")
    return list(seen)


def random_camera(generator: torch.Generator, options: PriorOptions) -> tuple[Tensor, Tensor]:
    """K (3, 3) in pixels and OpenCV w2c (4, 4) of a camera on a sphere, looking at the centre."""
    u = torch.rand(4, generator=generator, dtype=torch.float64)

    def within(bounds: tuple[float, float], t: Tensor) -> Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * t

    radius, focal = within(options.radius, u[0]), within(options.focal_per_width, u[3])
    elevation = torch.deg2rad(within(options.elevation_deg, u[1]))
    eye = spherical_to_cartesian(u[2] * 2.0 * math.pi, elevation, radius)
    w2c = look_at(eye, torch.zeros(3, dtype=eye.dtype), torch.tensor([0.0, 0.0, 1.0]).double())
    size = options.image_size
    K = torch.tensor(
        [[focal * size, 0.0, size / 2 - 0.5], [0.0, focal * size, size / 2 - 0.5], [0, 0, 1]],
        dtype=torch.float64,
    )
    return K, w2c


def encode_prior_sample(
    key: str, category: str, caption: str, image: np.ndarray, camera: tuple[Tensor, Tensor],
    options: PriorOptions,
) -> dict:  # fmt: skip
    """One shard sample: an image (H, W, 3) uint8 as view 0, a full mask, the camera."""
    size = options.image_size
    picture = Image.fromarray(image)
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BICUBIC)
    jpg, png = io.BytesIO(), io.BytesIO()
    picture.save(jpg, format="JPEG", quality=options.jpeg_quality)
    Image.new("L", (size, size), 255).save(png, format="PNG")  # no object mask: all of it
    K, w2c = camera
    meta = {
        "format": SAMPLE_FORMAT,
        "category": category,
        "sequence": key,
        "chunk": 0,
        "num_chunks": 1,
        "captions": [caption],
        "image_size": size,
        "similarity": torch.eye(4).tolist(),
        "prior": True,
        "frames": [
            {
                "frame_number": 0,
                "K": K.tolist(),
                "w2c": w2c.tolist(),
                "source_size_hw": [size, size],
                "crop_box": [0, 0, size],
            },
        ],  # fmt: skip
    }
    return {"__key__": key, "json": json.dumps(meta).encode(), "000.jpg": jpg.getvalue(),
            "000.mask.png": png.getvalue()}  # fmt: skip


def generate_images(pipe, caption: str, options: PriorOptions, index: int) -> np.ndarray:
    """``images_per_caption`` images (K, H, W, 3) uint8 of the base pipeline for one caption."""
    generator = torch.Generator().manual_seed(options.seed + index)
    images = pipe(
        caption,
        num_images_per_prompt=options.images_per_caption,
        num_inference_steps=options.num_inference_steps,
        guidance_scale=options.guidance_scale,
        generator=generator,
        output_type="np",
    ).images
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def plan_shards(
    captions: Sequence[tuple[str, str]], options: PriorOptions
) -> list[tuple[str, list[int], str]]:
    """(shard name, caption indices, plan hash) of every shard."""
    per_shard = max(1, options.samples_per_shard // options.images_per_caption)
    plans: list[tuple[str, list[int], str]] = []
    for start in range(0, len(captions), per_shard):
        indices = list(range(start, min(start + per_shard, len(captions))))
        digest = json.dumps(
            {"captions": [captions[i] for i in indices], "options": asdict(options)},
            sort_keys=True,
        )
        name = f"prior-{len(plans):06d}.tar"
        plans.append((name, indices, hashlib.sha1(digest.encode()).hexdigest()[:16]))
    return plans


def write_prior_set(
    pipe: Callable[[], Any],
    captions: Sequence[tuple[str, str]],
    out: str | Path,
    options: PriorOptions,
) -> dict:
    """Generate the prior images of ``captions`` with the pipeline that ``pipe()`` returns (called
    only when a shard is missing) into shards; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = {}
    if (out / MANIFEST).is_file():
        previous = {entry["name"]: entry for entry in read_manifest(out).get("shards", [])}
    plans = plan_shards(captions, options)
    entries = {}
    progress = tqdm(total=len(captions) * options.images_per_caption, desc="prior images")
    for name, indices, plan in plans:
        done = previous.get(name, {})
        if (out / name).is_file() and done.get("plan") == plan:
            entries[name] = done
            progress.update(len(indices) * options.images_per_caption)
            continue
        partial = out / f".{name}.partial"
        with open(partial, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0) as sink:
            for index in indices:
                category, caption = captions[index]
                camera_generator = torch.Generator().manual_seed(options.seed + index)
                for k, image in enumerate(generate_images(pipe(), caption, options, index)):
                    camera = random_camera(camera_generator, options)
                    key = f"prior-{index:06d}-{k:02d}"
                    sink.write(encode_prior_sample(key, category, caption, image, camera, options))
                    progress.update()
        os.replace(partial, out / name)
        count = len(indices) * options.images_per_caption
        entries[name] = {"name": name, "samples": count, "frames": count,
                         "categories": sorted({captions[i][0] for i in indices}), "plan": plan,
                         "skipped": {}, "errors": []}  # fmt: skip
        write_json(out / MANIFEST, prior_manifest(plans, entries, options, complete=False))
    progress.close()
    manifest = prior_manifest(plans, entries, options, complete=True)
    write_json(out / MANIFEST, manifest)
    return manifest


def prior_manifest(
    plans: list[tuple[str, list[int], str]], entries: dict, options: PriorOptions, complete: bool
) -> dict:
    """The manifest of the shards written so far (the shard manifest's keys)."""
    shards = [entries[name] for name, _, _ in plans if name in entries]
    return {
        "format": SAMPLE_FORMAT,
        "complete": complete,
        "split": PRIOR_SPLIT,
        "image_size": options.image_size,
        "categories": sorted({c for entry in shards for c in entry["categories"]}),
        "totals": {
            "shards": len(shards),
            "samples": sum(entry["samples"] for entry in shards),
            "frames": sum(entry["frames"] for entry in shards),
        },
        "skipped": dict.fromkeys(SKIP_REASONS, 0),
        "options": asdict(options),
        "shards": shards,
    }
