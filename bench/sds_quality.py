"""Score distillation on the shipped toy prior, measured; prints a table (a few minutes per run).

    python bench/sds_quality.py [--checkpoint viewdiff/assets/toy/multiview] [--work DIR]
        [--prompts "a red ball" "a blue box"] [--steps 500] [--quick]

1. Text to 3D: ``infer.py sds --config configs/sds_tiny.yaml`` for each prompt; on the 24-view
   turntable the toy colour rule must name the prompt's colour in every view, and every view's
   foreground must be one piece (one object, not several).
2. Image to 3D: one view of a held-out toy object (fresh seed) given with its camera; PSNR of the
   scene's renders on the object's other true views against the best constant-colour scene.

Figures go to WORK/sds_quality.json, the turntables to WORK/<run>/ and a picture of all runs to
WORK/sds_quality.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import infer  # noqa: E402
from viewdiff.cameras.cameras_json import write_cameras  # noqa: E402
from viewdiff.commands.options import positive_int
from viewdiff.scene.gaussians import read_gaussian_ply  # noqa: E402
from viewdiff.scene.losses import psnr  # noqa: E402
from viewdiff.scene.render import render  # noqa: E402
from viewdiff.toy.assets import TOY_MULTIVIEW  # noqa: E402
from viewdiff.toy.classify import classify_colour, toy_words  # noqa: E402
from viewdiff.toy.images import read_shard_images  # noqa: E402
from viewdiff.toy.quality import make_toy_shards  # noqa: E402
from viewdiff.toy.scene_checks import (  # noqa: E402
    constant_colour_psnr,
    silhouette_parts,
)


def frames_of(run: Path) -> torch.Tensor:
    """The turntable frames (V, 3, H, W) in [0, 1] of an sds run folder."""
    paths = sorted((run / "frames").glob("frame_*.png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in paths]
                       ).float() / 255.0  # fmt: skip


def text_to_3d(checkpoint: Path, prompt: str, out: Path, extra: list[str]) -> dict:
    """Distil ``prompt`` and check colour and silhouettes on the turntable."""
    argv = ["sds", "--config", "configs/sds_tiny.yaml", "--checkpoint", str(checkpoint),
            "--prompt", prompt, "--out", str(out), *extra]  # fmt: skip
    infer.main(argv)
    frames = frames_of(out)
    colours, parts = classify_colour(frames), silhouette_parts(frames)
    wanted = toy_words(prompt)[0]
    document = json.loads((out / "sds.json").read_text())
    return {
        "prompt": prompt,
        "colour_right": sum(c == wanted for c in colours) / len(colours),
        "colours": colours,
        "one_piece": sum(p == 1 for p in parts) / len(parts),
        "parts": parts,
        "minutes": document["wall_seconds"] / 60,
        "seconds_per_step": document["seconds_per_step"],
        "gaussians": document["gaussians"],
    }


def image_to_3d(checkpoint: Path, work: Path, extra: list[str]) -> dict:
    """Distil from one held-out view; PSNR on the other true views vs the best constant."""
    shards = make_toy_shards(work / "heldout", 1, 8, seed=11)
    views = read_shard_images(shards, show_progress=False)
    rows = views.views_of(0)
    given, others = int(rows[0]), rows[1:]
    Image.fromarray(views.images[given].permute(1, 2, 0).numpy()).save(work / "given.png")
    size = views.images.shape[-1]
    write_cameras(work / "given_camera.json", views.K[given : given + 1],
                  views.w2c[given : given + 1], (size, size))  # fmt: skip
    out = work / "image-to-3d"
    caption = views.captions[given]
    argv = ["sds", "--config", "configs/sds_tiny.yaml", "--checkpoint", str(checkpoint),
            "--prompt", caption, "--image", str(work / "given.png"),
            "--camera", str(work / "given_camera.json"), "--out", str(out), *extra]  # fmt: skip
    infer.main(argv)
    scene = read_gaussian_ply(out / "scene.ply")
    background = json.loads((out / "sds.json").read_text())["background"]
    targets = views.images[others].float() / 255.0
    renders = torch.stack([render(scene, views.K[i], views.w2c[i], size, size, background).rgb
                           for i in others.tolist()]).clamp(0, 1)  # fmt: skip
    scores = [psnr(r, t) for r, t in zip(renders, targets, strict=True)]
    given_render = render(scene, views.K[given], views.w2c[given], size, size, background).rgb
    return {
        "caption": caption,
        "psnr_other_views": sum(scores) / len(scores),
        "psnr_constant_colour": constant_colour_psnr(targets),
        "psnr_given_view": psnr(given_render.clamp(0, 1), views.images[given].float() / 255.0),
        "other_views": len(scores),
    }


def picture(runs: list[Path], out: Path) -> None:
    """Every run's turntable, 8 of its frames in a row."""
    rows = []
    for run in runs:
        frames = sorted((run / "frames").glob("frame_*.png"))
        step = max(len(frames) // 8, 1)
        rows.append(np.concatenate([np.asarray(Image.open(p)) for p in frames[::step][:8]], 1))
    Image.fromarray(np.concatenate(rows, 0)).save(out)


def main(argv: list[str] | None = None) -> int:
    """Run the checks and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=TOY_MULTIVIEW)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-sds"))
    parser.add_argument("--prompts", nargs="+", default=["a red ball", "a blue box"])
    parser.add_argument("--steps", type=positive_int, help="SDS steps (default: the preset's 500)")
    parser.add_argument("--quick", action="store_true", help="a few steps each (the test)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    extra = ["--steps", str(args.steps)] if args.steps else []
    if args.quick:
        extra = ["--steps", "3", "sds.eval_every=0", "sds.turntable_views=8"]
    results = {"text_to_3d": [], "checkpoint": str(args.checkpoint)}
    runs = []
    for index, prompt in enumerate(args.prompts):
        runs.append(args.work / f"text-{index}")
        results["text_to_3d"].append(text_to_3d(args.checkpoint, prompt, runs[-1], extra))
    results["image_to_3d"] = image_to_3d(args.checkpoint, args.work, extra)
    runs.append(args.work / "image-to-3d")
    (args.work / "sds_quality.json").write_text(json.dumps(results, indent=2) + "\n")
    picture(runs, args.work / "sds_quality.png")
    print("| run | colour right (24 views) | one piece | minutes | s/step | Gaussians |")
    print("|---|---|---|---|---|---|")
    for r in results["text_to_3d"]:
        print(f"| {r['prompt']} | {r['colour_right']:.0%} | {r['one_piece']:.0%} | "
              f"{r['minutes']:.1f} | {r['seconds_per_step']:.2f} | {r['gaussians']} |")  # fmt: skip
    image = results["image_to_3d"]
    print(
        f"\nimage to 3D ({image['caption']}): PSNR on {image['other_views']} other true views "
        f"{image['psnr_other_views']:.2f} dB vs best constant colour "
        f"{image['psnr_constant_colour']:.2f} dB (given view {image['psnr_given_view']:.2f} dB)"
    )
    figures, pictures = args.work / "sds_quality.json", args.work / "sds_quality.png"
    print(f"figures: {figures}, picture: {pictures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
