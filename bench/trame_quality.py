"""TrAME on the toy prior, measured: a Gaussian red ball edited to "a blue ball"; prints a table.

    python bench/trame_quality.py [--checkpoint viewdiff/assets/toy/multiview] [--work DIR]
        [--source red --target blue --shape ball] [--views 16] [--quick]

A held-out toy object (fresh seed) is fitted as a 3D Gaussian scene from its 12 synthetic views
(on a flat grey background), then edited by ``TrameEditor`` from ``--views`` cameras on the toy
prior's orbit, four ways with the same steps and 3D-update budget: full TrAME, ``no_tas``
(every view edited in 2D first, then the scene reconstructed from them), ``no_vcac`` (no
attention control or blending) and ``ddpm`` (full TrAME on the edit-friendly DDPM noise instead
of DDCM). Measured on a 24-view orbit of the edited scene: the toy colour rule per view (target
colour wanted, >= 90%), the PSNR outside the original object against the original scene's
renders (>= 25 dB), and the edit's 3D consistency: the PSNR of the edited
scene's renders against the final 2D pseudo ground truth at the edit views, and at held-out edit
views (every fourth: edited in 2D, never used by the 3D updates) (``editing.metrics``).
``--scene direct`` edits a red ball written directly as Gaussians instead (flat colour, no
light, never rendered by the toy renderer: what a user brings, ``viewdiff.toy.direct_scene``).
Figures go to WORK/trame_quality.json, the before/after picture to WORK/trame_quality.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from viewdiff.commands.options import positive_int
from viewdiff.editing.editing_model import load_editing_model  # noqa: E402
from viewdiff.prior.load import read_export  # noqa: E402
from viewdiff.scene.fit import FitConfig, PosedViews, fit  # noqa: E402
from viewdiff.scene.gaussians import GaussianScene  # noqa: E402
from viewdiff.toy.assets import TOY_MULTIVIEW  # noqa: E402
from viewdiff.toy.classify import classify_colour, toy_words  # noqa: E402
from viewdiff.toy.direct_scene import direct_ball  # noqa: E402
from viewdiff.toy.images import read_shard_images  # noqa: E402
from viewdiff.toy.quality import make_toy_shards, toy_orbit  # noqa: E402
from viewdiff.trame.config import TrameConfig  # noqa: E402
from viewdiff.trame.editor import TrameEditor  # noqa: E402
from viewdiff.trame.metrics import edit_metrics  # noqa: E402
from viewdiff.visualize import image_grid, to_pil  # noqa: E402

SCENE_FIT = FitConfig(iterations=600, sh_degree=0, densify_from=100, densify_until=450,
                      densify_interval=50, opacity_reset_interval=10_000, max_gaussians=3000,
                      background=(0.5, 0.5, 0.5))  # fmt: skip
ORBIT = 24


def toy_scene(work: Path, colour: str, shape: str, size: int, quick: bool) -> GaussianScene:
    """A Gaussian scene fitted to the 12 views of a held-out toy object of colour and shape."""
    shards = make_toy_shards(work / "heldout", 6 if quick else 12, 12, seed=17, image_size=size)
    data = read_shard_images(shards, show_progress=False)
    for index in range(len(data.objects)):
        views = data.views_of(index)
        if toy_words(data.captions[int(views[0])]) == (colour, shape):
            break
    else:
        raise SystemExit(f"no held-out {colour} {shape}: more objects are needed")
    images = data.floats(views)
    posed = PosedViews((images + 1) / 2, data.K[views], data.w2c[views], data.masks[views] / 255.0)
    config = SCENE_FIT if not quick else dataclasses.replace(SCENE_FIT, iterations=30,
                                                              densify_until=0)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    start = GaussianScene.random_in_sphere(2000, 1.0, sh_degree=0, generator=generator)
    return fit(start, posed, config, progress=False).scene


def main(argv: list[str] | None = None) -> int:
    """Fit, edit three ways, measure, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=TOY_MULTIVIEW)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-trame"))
    parser.add_argument("--source", default="red")
    parser.add_argument("--target", default="blue")
    parser.add_argument("--shape", default="ball")
    parser.add_argument("--views", type=positive_int, default=16, help="edit views on the orbit")
    parser.add_argument("--variants", default="full,no_tas,no_vcac,ddpm")
    parser.add_argument(
        "--scene",
        choices=("fitted", "direct"),
        default="fitted",
        help="fitted to toy renders, or a ball written directly as Gaussians (flat colour)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (the test)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    editing = load_editing_model(args.checkpoint)
    settings = read_export(args.checkpoint).config.sample
    size = editing.image_size
    if args.scene == "direct":  # what a user brings: no toy renders, no fit, no shading
        if args.shape != "ball":
            parser.error("--scene direct writes a ball: use --shape ball")
        scene = direct_ball(args.source)
    else:
        scene = toy_scene(args.work, args.source, args.shape, size, args.quick)
    cameras = toy_orbit(settings, args.views, size)
    orbit = toy_orbit(settings, ORBIT, size)
    source = f"a {args.source} {args.shape}"
    target = f"a {args.target} {args.shape}"
    # Every fourth edit view is edited in 2D but never shown to the 3D updates.
    base = TrameConfig(held_out=tuple(range(3, args.views, 4)))
    if args.quick:
        base = TrameConfig(steps=4, start=2, updates=((0, 1),), keyframe_every=2, held_out=(3,))
    variants = {
        "full": base,
        "no_tas": dataclasses.replace(base, tas=False),
        "no_vcac": dataclasses.replace(base, vcac=False),
        # The inversion paper's guidance (3.5 to invert, 15 to edit) and a partial anchoring:
        # with f = 0 the source's noise maps pull every re-anchored step back to the original.
        "ddpm": dataclasses.replace(
            base, sampler="ddpm", source_guidance=3.5, guidance=15.0, f=((0, 1.0), (11, 0.3))
        ),
    }
    rows, pictures, started = {}, [], time.perf_counter()
    for name in args.variants.split(","):
        clock = time.perf_counter()
        editor = TrameEditor(editing, scene, cameras, source, target, variants[name])
        while not editor.done:
            editor.step()
        metrics = edit_metrics(editor, orbit)
        metrics["colours"] = classify_colour(metrics.pop("orbit_renders"))
        metrics["target_colour"] = sum(c == args.target for c in metrics["colours"]) / ORBIT
        metrics["minutes"] = (time.perf_counter() - clock) / 60
        rows[name] = metrics
        if not pictures:
            pictures += [to_pil(x * 2 - 1) for x in editor.render_all(editor.original)[::2]]
        pictures += [to_pil(x * 2 - 1) for x in editor.render_all(editor.scene())[::2]]
    minutes = (time.perf_counter() - started) / 60
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, "variants": rows,
               "config": str(base), "minutes": minutes}  # fmt: skip
    (args.work / "trame_quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    image_grid(pictures, max(1, args.views // 2)).save(args.work / "trame_quality.png")
    print(f"{source} -> {target} ({args.scene} scene), {args.views} edit views, {ORBIT}-view "
          f"orbit ({minutes:.1f} min)")  # fmt: skip
    print("| variant | target colour | PSNR outside the object | 3D consistency | held-out views "
          "| minutes |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['target_colour']:.0%} | {m['outside_psnr']:.2f} dB | "
              f"{m['consistency_psnr']:.2f} dB | {m['held_out_psnr']:.2f} dB | "
              f"{m['minutes']:.1f} |")  # fmt: skip
    print(
        f"figures: {args.work / 'trame_quality.json'}, picture: {args.work / 'trame_quality.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
