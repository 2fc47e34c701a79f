"""What the shipped toy world knows, measured on objects it never saw; prints a table.

    python bench/toy_quality.py [--checkpoint viewdiff/assets/toy/multiview] [--work DIR]
        [--samples-per-prompt 4] [--consistency-prompts 6] [--eval-objects 30]
        [--world toy|toy_sided] [--only camera-use] [--quick]

1. Classifiers (``viewdiff.toy.classify``) on real held-out renders and on their VAE round trips:
   the colour rule and the shape classifier, fitted on other real renders.
2. VAE: PSNR of the round trip of held-out views (target >= 26 dB).
3. Text to image: colour and shape accuracy over every toy prompt, for the toy SD (one image at
   a time, DDIM 20, CFG 4) and for the multi-view prior (4 joint views on its default orbit);
   targets: colour >= 85%, shape >= 70%.
4. 3D consistency: 8 views of an object on the orbit, Gaussians fitted to 6, PSNR on the 2 held
   out (views 3 and 7), for 8 views generated jointly by the prior and for 8 images generated
   one by one by the toy SD (the per-view baseline, fitted with the same cameras). The same
   measure on real renders gives its range: 8 views of one object, and 8 views of 8 different
   objects of the same caption. The fit is on the object alone (backdrop masked out). In the
   sided world (``--world toy_sided``, the objects' darker side and world-fixed backdrop) also:
   the backdrop's consistency by ray direction (``viewdiff.toy.backdrop_check``), and whether
   the darker side sits in one 3D place (``viewdiff.toy.feature_check``; target >= 90% of joint
   view sets).
5. Image-conditional novel views (``infer.py eval``: 1 true view given, 3 generated at their
   true cameras) on held-out objects, next to copying the given view into every other view.
6. How much the prior reads the other views (``viewdiff.toy.view_reliance``): a held-out view
   noised to t = 250 / 500 / 750 and predicted from its object's other views, from another
   object's, jointly noised, and alone; the gaps in dB of the x_0 error, +- standard error; and
   whether its projection layers carry anything 3D (``viewdiff.toy.projection_activity``: their
   output's variation over pixels, its change when the cameras are rolled, and the held-out
   view's output's and the voxel grid's change when only the other views' cameras are).

``--only camera-use`` measures 6 alone (about 2 minutes instead of 10-12): the screen for a
training recipe that is meant to make a prior use its cameras.

Everything runs on the CPU in a few minutes; held-out objects are made here with seeds that the
training data (seed 0) does not use. Figures go to WORK/quality.json, pictures to WORK/.
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

import torch  # noqa: E402
from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402

from viewdiff.commands.options import positive_int
from viewdiff.config import DataConfig  # noqa: E402
from viewdiff.data.toy_objects import toy_prompts  # noqa: E402
from viewdiff.inference.evaluate import summarize, view_metrics  # noqa: E402
from viewdiff.inference.heldout import evaluate_heldout, heldout_objects  # noqa: E402
from viewdiff.inference.trajectory import Trajectory  # noqa: E402
from viewdiff.prior.load import MultiViewPrior, load_export  # noqa: E402
from viewdiff.toy.assets import TOY_MULTIVIEW  # noqa: E402
from viewdiff.toy.classify import classifier_accuracy, fit_shape_classifier  # noqa: E402
from viewdiff.toy.images import read_shard_images  # noqa: E402
from viewdiff.toy.projection_activity import projection_activity  # noqa: E402
from viewdiff.toy.quality import (  # noqa: E402
    CONSISTENCY_FIT,
    TOY_CROPS,
    averaged,
    consistency_scores,
    make_toy_shards,
    prior_views,
    toy_orbit,
    unit,
)
from viewdiff.toy.t2i_training import generate  # noqa: E402
from viewdiff.toy.vae_training import reconstruct, reconstruction_psnr  # noqa: E402
from viewdiff.toy.view_reliance import RATIOS, view_reliance  # noqa: E402
from viewdiff.visualize import image_grid, to_pil  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=TOY_MULTIVIEW, help="toy prior export")
    parser.add_argument("--work", type=Path, default=Path("runs/toy-quality"), help="work folder")
    parser.add_argument(
        "--samples-per-prompt", type=positive_int, default=4, help="toy SD images per prompt"
    )
    parser.add_argument(
        "--consistency-prompts", type=positive_int, default=6, help="objects fitted, x2"
    )
    parser.add_argument(
        "--eval-objects", type=positive_int, default=30, help="held-out objects (eval)"
    )
    parser.add_argument(
        "--calibration-objects", type=positive_int, default=3, help="real objects fitted"
    )
    parser.add_argument("--fit-iterations", type=positive_int, default=CONSISTENCY_FIT.iterations)
    parser.add_argument(
        "--reliance-objects", type=positive_int, default=24, help="held-out objects (reliance)"
    )
    parser.add_argument(
        "--world", choices=tuple(TOY_CROPS), default="toy", help="the toy world the prior knows"
    )
    parser.add_argument(
        "--only", choices=("camera-use",), help="measure 6 alone (the 2-minute screen)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer of everything (a smoke run)")
    args = parser.parse_args(argv)
    args.reference_objects, args.heldout_objects = 40, 20  # per shape
    args.reliance_draws = 4  # noise draws per object and timestep
    if args.quick:
        args.samples_per_prompt, args.consistency_prompts, args.eval_objects = 1, 1, 4
        args.reliance_objects, args.reliance_draws = 4, 1
        args.calibration_objects = 1
        args.fit_iterations = 100
        args.reference_objects, args.heldout_objects = 8, 7  # 7: two objects share a caption
    return args


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """Images (M, 3, H, W) in [0, 1] as one picture."""
    image_grid([to_pil(image * 2 - 1) for image in images], columns=columns).save(path)


def main(argv: list[str] | None = None) -> dict:
    """Measure everything; print the table; return the figures."""
    args = parse_args(argv)
    torch.manual_seed(0)
    args.work.mkdir(parents=True, exist_ok=True)
    started, figures = time.perf_counter(), {}
    prior = load_export(args.checkpoint)
    settings = prior.info.config.sample
    pipe = StableDiffusionPipeline.from_pretrained(prior.info.pretrained_model)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    size, world = prior.info.config.data.image_size, args.world
    heldout_shards = make_toy_shards(
        args.work / "heldout", args.heldout_objects, 8, 1, image_size=size, style=world
    )
    crop = "object" if TOY_CROPS[world] == "object" else "random_square"  # as the shards were cut
    data = DataConfig(shards=str(heldout_shards), image_size=size, n_views=4, num_workers=0,
                      crop=crop)  # fmt: skip
    if args.only == "camera-use":
        figures.update(camera_use(prior, data, args))
        return finish(figures, started, args.work)

    # 1. Classifiers on real renders (fitted on seed 2, scored on held-out seed 1).
    reference = read_shard_images(
        make_toy_shards(
            args.work / "reference", args.reference_objects, 4, 2, image_size=size, style=world
        )
    )
    heldout = read_shard_images(heldout_shards)
    classifier = fit_shape_classifier(unit(reference), reference.categories)
    round_trip = (reconstruct(pipe.vae, heldout.floats()) + 1.0) / 2.0
    figures["classifier_real"] = classifier_accuracy(classifier, unit(heldout), heldout.captions)
    figures["classifier_vae"] = classifier_accuracy(classifier, round_trip, heldout.captions)
    # 2. VAE round trip.
    figures["vae_psnr"] = reconstruction_psnr(pipe.vae, heldout.floats())

    # 3. Text to image over every prompt.
    prompts = toy_prompts()
    repeated = [p for p in prompts for _ in range(args.samples_per_prompt)]
    sd_images = generate(pipe, repeated, seed=1000)  # DDIM 20, CFG 4
    figures["t2i_base"] = classifier_accuracy(classifier, sd_images, repeated)
    save_grid(sd_images[:: args.samples_per_prompt], args.work / "t2i_base.png", 6)
    orbit4 = toy_orbit(settings, 4, prior.info.config.data.image_size)
    joint = prior_views(prior, prompts, orbit4, settings, seed=2000)  # (18, 4, 3, H, W)
    per_view_prompts = [p for p in prompts for _ in range(4)]
    figures["t2i_prior"] = classifier_accuracy(classifier, joint.flatten(0, 1), per_view_prompts)
    save_grid(joint.flatten(0, 1), args.work / "t2i_prior.png", 8)

    # 4. 3D consistency: joint views vs one-by-one images, Gaussians fitted with the same cameras.
    orbit8 = toy_orbit(settings, 8, prior.info.config.data.image_size)
    chosen = [prompts[(i * 7) % len(prompts)] for i in range(args.consistency_prompts)]
    fit_config = dataclasses.replace(
        CONSISTENCY_FIT,
        iterations=args.fit_iterations,
        densify_until=min(CONSISTENCY_FIT.densify_until, args.fit_iterations * 3 // 4),
    )
    scores: dict[str, list[dict[str, float]]] = {"joint": [], "single": []}
    shown = []
    for i, prompt in enumerate(chosen):
        views = prior_views(prior, [prompt], orbit8, settings, seed=3000 + i)[0]
        singles = generate(pipe, [prompt] * 8, seed=4000 + 8 * i)
        for kind, images in (("joint", views), ("single", singles)):
            scores[kind].append(consistency_scores(images, orbit8, fit_config, i, world))
        shown += [views, singles]
        print(f"3D consistency {prompt!r}: joint {scores['joint'][-1]}, "
              f"one by one {scores['single'][-1]}", flush=True)  # fmt: skip
    figures["consistency_joint"] = averaged(scores["joint"])
    figures["consistency_single"] = averaged(scores["single"])
    figures["consistency_joint_psnr"] = figures["consistency_joint"]["object_psnr"]
    figures["consistency_single_psnr"] = figures["consistency_single"]["object_psnr"]
    figures["consistency_real"] = metric_range(heldout, args.calibration_objects, fit_config, world)
    figures["consistency_prompts"] = chosen
    save_grid(torch.cat(shown), args.work / "consistency.png", 8)

    # 5. Image-conditional novel views on held-out objects, and copying the given view.
    results = evaluate_heldout(prior, data, 1, settings, args.work / "eval", args.eval_objects)
    figures["novel_views"] = summarize(results)
    copies = []
    for sample in heldout_objects(data, 0, args.eval_objects):
        images, masks = sample["images"], sample["masks"]
        copied = images[:1].expand(len(images) - 1, -1, -1, -1)
        copies.append(view_metrics(copied, images[1:], masks[1:]))
    figures["novel_views_copy_baseline"] = {
        name: sum(sum(c[name]) / len(c[name]) for c in copies) / len(copies)
        for name in ("psnr", "psnr_masked", "ssim")
    }

    # 6. How much the prior reads the other views.
    figures.update(camera_use(prior, data, args))
    return finish(figures, started, args.work)


def finish(figures: dict, started: float, work: Path) -> dict:
    """Add the minutes taken, print the table, write WORK/quality.json; the figures."""
    figures["minutes"] = (time.perf_counter() - started) / 60.0
    print_table(figures)
    (work / "quality.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def camera_use(prior: MultiViewPrior, data: DataConfig, args: argparse.Namespace) -> dict:
    """Measure 6: how much the prior reads its held-out objects' other views, and where from."""
    objects = list(heldout_objects(data, 0, args.reliance_objects))
    return {
        "reliance": {
            str(r.timestep): r.summary()
            for r in view_reliance(prior, objects, draws=args.reliance_draws)
        },
        "projection_activity": [
            dataclasses.asdict(layer) for layer in projection_activity(prior, objects)
        ],
    }


def metric_range(heldout, objects: int, fit_config, world: str) -> dict[str, dict[str, float]]:
    """The consistency measures on real renders: 8 views of one object (their ceiling here), and
    8 views of 8 different objects with the same caption at that object's cameras (a floor)."""
    one, mixed = [], []
    captions = [heldout.captions[heldout.views_of(o)[0]] for o in range(len(heldout.objects))]
    shared = [o for o, caption in enumerate(captions) if captions.count(caption) > 1]
    for index in shared[:: max(1, len(shared) // objects)][:objects]:
        rows = heldout.views_of(index)[:8]
        cameras = Trajectory(heldout.K[rows], heldout.w2c[rows], tuple(heldout.images.shape[-2:]))
        others = [o for o, c in enumerate(captions) if o != index and c == captions[index]]
        swapped = torch.stack([heldout.views_of(others[j % len(others)])[j] for j in range(8)])
        one.append(consistency_scores(unit(heldout)[rows], cameras, fit_config, 0, world))
        mixed.append(consistency_scores(unit(heldout)[swapped], cameras, fit_config, 0, world))
    return {"one_object": averaged(one), "different_objects": averaged(mixed)}


def print_table(f: dict) -> None:
    """The figures as a table (measure 6 alone after ``--only camera-use``)."""
    rows = [] if "vae_psnr" not in f else [
        ("classifier on real held-out renders: colour / shape",
         f"{f['classifier_real']['colour']:.1%} / {f['classifier_real']['shape']:.1%}", ""),
        ("classifier on their VAE round trips: colour / shape",
         f"{f['classifier_vae']['colour']:.1%} / {f['classifier_vae']['shape']:.1%}", ""),
        ("VAE held-out PSNR", f"{f['vae_psnr']:.2f} dB", ">= 26 dB"),
        ("toy SD text-to-image: colour / shape",
         f"{f['t2i_base']['colour']:.1%} / {f['t2i_base']['shape']:.1%}", ">= 85% / 70%"),
        ("multi-view prior text-to-views: colour / shape",
         f"{f['t2i_prior']['colour']:.1%} / {f['t2i_prior']['shape']:.1%}", ">= 85% / 70%"),
        ("3D consistency, held-out PSNR: joint views",
         f"{f['consistency_joint_psnr']:.2f} dB", "> one by one"),
        ("3D consistency, held-out PSNR: one by one (toy SD)",
         f"{f['consistency_single_psnr']:.2f} dB", ""),
        ("  real renders: one object / 8 different objects",
         f"{f['consistency_real']['one_object']['object_psnr']:.2f} / "
         f"{f['consistency_real']['different_objects']['object_psnr']:.2f} dB", ""),
        ("novel views from 1 view: PSNR / masked PSNR / SSIM",
         f"{f['novel_views']['psnr']:.2f} / {f['novel_views']['psnr_masked']:.2f} / "
         f"{f['novel_views']['ssim']:.3f}", ""),
        ("  copying the given view instead",
         f"{f['novel_views_copy_baseline']['psnr']:.2f} / "
         f"{f['novel_views_copy_baseline']['psnr_masked']:.2f} / "
         f"{f['novel_views_copy_baseline']['ssim']:.3f}", ""),
    ]  # fmt: skip
    if "backdrop_psnr" in f.get("consistency_joint", {}):  # the sided world
        joint, single, real = f["consistency_joint"], f["consistency_single"], f["consistency_real"]
        one, mixed = real["one_object"], real["different_objects"]
        rows[8:8] = [
            ("3D consistency of the backdrop: joint / one by one",
             f"{joint['backdrop_psnr']:.2f} / {single['backdrop_psnr']:.2f} dB", ""),
            ("  real renders: one object / 8 different objects",
             f"{one['backdrop_psnr']:.2f} / {mixed['backdrop_psnr']:.2f} dB", ""),
            ("darker side in one 3D place: joint / one by one",
             f"{joint['mark_one_place']:.0%} / {single['mark_one_place']:.0%}", ">= 90% joint"),
            ("  real renders: one object / 8 different objects",
             f"{one['mark_one_place']:.0%} / {mixed['mark_one_place']:.0%}", ""),
            ("darker side, views agreeing: joint / one by one",
             f"{joint['mark_agreement']:.0%} / {single['mark_agreement']:.0%}", ""),
        ]  # fmt: skip
    for t, r in f["reliance"].items():
        rows.append((f"reads other views, t={t}: gain / joint gain / contrast / pose use",
                     " / ".join(f"{r[n]:.2f}+-{r[n + '_se']:.2f}" for n in RATIOS) + " dB",
                     "> 0 dB"))  # fmt: skip
    for layer in f["projection_activity"]:
        rows.append((f"projection layer {layer['name'].split('.')[-1][:28]}: "
                     "opacity / spatial / camera / placement / grid placement",
                     " / ".join(f"{layer[k]:.{2 if k == 'opacity' else 3}f}" for k in
                                ("opacity", "spatial", "camera", "placement", "grid_placement")),
                     "> 0"))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':{width}s}  {'value':>24s}  target")
    for name, value, target in rows:
        print(f"{name:{width}s}  {value:>24s}  {target}")
    print(f"({f['minutes']:.1f} minutes)")


if __name__ == "__main__":
    main(sys.argv[1:])
