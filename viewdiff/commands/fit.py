"""``infer.py fit``: a 3D Gaussian splatting scene fitted to a generation folder.

Reads what ``infer.py sample`` / ``condition`` wrote (``viewdiff.inference.outputs``): the views
``views/*.png`` in name order and their cameras ``cameras.json``. Writes into ``--out``:
``scene.ply`` (standard 3DGS layout, loads in ``infer.py render``), ``fit.json`` (the fit config,
per-view PSNR of the fitted views and of the ``--held-out`` ones, seconds, Gaussians), and a
turntable (frames/, turntable.gif, turntable.mp4 when imageio-ffmpeg is there, cameras.json)
on the orbit of the generation's cameras; and ``checkpoint/`` every ``--checkpoint-every``
steps (the scene, Adam, the density statistics and the RNG, replaced atomically), from which
``--resume OUT/checkpoint`` continues a killed fit to the very scene it would have written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch

from viewdiff.cameras.conventions import camera_centers
from viewdiff.cameras.orbits import cartesian_to_spherical
from viewdiff.commands.options import (
    add_background_argument,
    add_device_argument,
    add_out_argument,
    add_resume_argument,
    add_seed_argument,
    int_in,
    nonnegative_int,
    positive_int,
    resume_folder,
    view_count,
)
from viewdiff.inference.inputs import read_image
from viewdiff.inference.outputs import output_folder
from viewdiff.inference.read_generation import GenerationViews, read_generation_views
from viewdiff.output_folders import check_output_folder
from viewdiff.prior.load import chosen_device
from viewdiff.run_lock import lock_folder
from viewdiff.scene.checkpoint import CHECKPOINT
from viewdiff.scene.fit import FitCheckpoints, FitConfig, PosedViews, fit
from viewdiff.scene.gaussians import GaussianScene, write_gaussian_ply
from viewdiff.scene.render import Backend
from viewdiff.scene.turntable import render_turntable, save_turntable

INIT_RADIUS = 1.0
"""Radius of the ball of the initial Gaussians: generated views see the normalised scene, whose
object box is [-1, 1]^3 (``viewdiff.inference.trajectory``)."""


def add_fit_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py fit``: fit 3D Gaussians to the views of a generation folder."""
    parser = commands.add_parser(
        "fit",
        help="fit a 3D Gaussian scene (3DGS PLY) to a folder of generated views",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--views", type=Path, required=True, metavar="DIR", help="generation folder"
    )
    add_out_argument(parser, metavar="DIR")
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=FitConfig.iterations,
        help="steps, one view each (%(default)s)",
    )
    parser.add_argument(
        "--gaussians", type=positive_int, default=2000, help="Gaussians at the start (%(default)s)"
    )
    parser.add_argument(
        "--sh-degree",
        type=int_in(0, 3),
        default=FitConfig.sh_degree,
        help="SH degree, 0-3 (%(default)s)",
    )
    add_seed_argument(parser, help="seed of the scene and view order (%(default)s)")
    add_device_argument(parser)
    parser.add_argument(
        "--held-out",
        type=nonnegative_int,
        nargs="+",
        default=[],
        metavar="V",
        help="view indices left out of the fit and scored (PSNR) on it",
    )
    add_background_argument(
        parser, "colour behind the scene, fitting and turntable, in [0, 1] (white)", (1.0, 1.0, 1.0)
    )
    parser.add_argument(
        "--turntable-views",
        type=view_count,
        default=60,
        help="frames of the turntable (%(default)s)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=nonnegative_int,
        default=500,
        help="steps between resumable checkpoints in OUT/checkpoint (0: none; %(default)s)",
    )
    add_resume_argument(parser)
    parser.set_defaults(run=run_fit)


def held_out_views(held_out: list[int], num_views: int) -> tuple[list[int], list[int]]:
    """The fitted and the held-out view indices, or a ValueError naming ``--held-out``."""
    chosen = sorted(set(held_out))
    if chosen and chosen[-1] >= num_views:
        raise ValueError(
            f"--held-out {chosen[-1]}: the generation has {num_views} views (0..{num_views - 1})"
        )
    fitted = [view for view in range(num_views) if view not in chosen]
    if not fitted:
        raise ValueError(f"--held-out leaves none of the {num_views} views to fit")
    return fitted, chosen


def fit_settings(args: argparse.Namespace) -> FitConfig:
    """FitConfig's recipe with the flags, its schedule scaled to ``--iterations`` steps."""
    base = FitConfig()
    scale = args.iterations / base.iterations

    def steps(count: int) -> int:
        return max(round(count * scale), 1)

    return dataclasses.replace(
        base,
        iterations=args.iterations,
        sh_degree=args.sh_degree,
        sh_increase_interval=steps(base.sh_increase_interval),
        densify_from=steps(base.densify_from),
        densify_until=steps(base.densify_until),
        opacity_reset_interval=steps(base.opacity_reset_interval),
        background=tuple(args.background),
        seed=args.seed,
    )


def posed_views(views: GenerationViews, indices: list[int]) -> PosedViews:
    """The images (in [0, 1]) and cameras of the views at ``indices``."""
    images = [np.asarray(read_image(views.paths[i]), dtype=np.float32) / 255.0 for i in indices]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (V, 3, H, W)
    return PosedViews(pixels, views.K[indices].float(), views.w2c[indices].float())


class Orbit(TypedDict):
    """Where a turntable's cameras circle, and its image size."""

    elevation_deg: float
    radius: float
    fov_deg: float
    size: int


def turntable_orbit(views: GenerationViews) -> Orbit:
    """Elevation (degrees), radius and horizontal field of view (degrees) of the generation's
    cameras, averaged: the turntable circles the object where the views were seen from."""
    spherical = cartesian_to_spherical(camera_centers(views.w2c.double()))
    width = views.image_size_hw[1]
    fov = 2.0 * torch.atan(width / (2.0 * views.K[:, 0, 0].double()))
    return {
        "elevation_deg": math.degrees(spherical[:, 1].mean().item()),
        "radius": spherical[:, 2].mean().item(),
        "fov_deg": math.degrees(fov.mean().item()),
        "size": width,
    }


def psnr_table(views: GenerationViews, indices: list[int], psnrs: list[float]) -> dict[str, Any]:
    """{"mean": dB, "views": {view file name: dB}}; an infinite PSNR (a view reproduced
    exactly) is written as null and left out of the mean."""
    finite = [value for value in psnrs if math.isfinite(value)]
    return {
        "mean": sum(finite) / len(finite) if finite else None,
        "views": {
            views.paths[i].name: (value if math.isfinite(value) else None)
            for i, value in zip(indices, psnrs, strict=True)
        },
    }


def run_fit(args: argparse.Namespace) -> None:
    """Check every input, fit, then write scene.ply, fit.json and the turntable."""
    # Inputs first, before any compute.
    check_output_folder(args.out)
    views = read_generation_views(args.views)
    fitted, held_out = held_out_views(args.held_out, len(views))
    device = chosen_device(args.device)
    generation = args.views / "generation.json"
    info = None
    if generation.is_file():
        try:
            info = json.loads(generation.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{generation}: not valid JSON ({error})") from None
    args.resume = resume_folder(args)
    if args.resume is not None and not (args.resume / "state.json").is_file():
        raise ValueError(f"--resume {args.resume}: not a fit checkpoint folder (no state.json)")
    output_folder(args.out)
    lock_folder(args.out, "infer.py fit")  # one writer per --out
    # The fit: 3DGS from Gaussians uniform in the object's ball.
    config = fit_settings(args)
    generator = torch.Generator().manual_seed(args.seed)
    start = GaussianScene.random_in_sphere(
        args.gaussians, INIT_RADIUS, args.sh_degree, generator=generator, device=device
    )
    started = time.perf_counter()
    test_views = posed_views(views, held_out) if held_out else None
    # What a resumed run must share with the checkpoint's (else it would not continue it).
    recipe = json.loads(json.dumps(dataclasses.asdict(config)))
    run = {"views": str(args.views.resolve()), "seed": args.seed, "gaussians": args.gaussians,
           "held_out": list(held_out), "fit": recipe}  # fmt: skip
    checkpoints = FitCheckpoints(args.out / CHECKPOINT, args.checkpoint_every, run)
    result = fit(start, posed_views(views, fitted), config, test_views=test_views,
                 checkpoints=checkpoints, resume=args.resume)  # fmt: skip
    # The outputs.
    write_gaussian_ply(args.out / "scene.ply", result.scene)
    orbit = turntable_orbit(views)
    backend = cast(Backend, config.backend)  # fit() rendered with it: resolve_backend checked it
    turntable = render_turntable(
        result.scene, args.turntable_views, orbit["elevation_deg"], orbit["radius"],
        orbit["size"], orbit["fov_deg"], tuple(args.background), backend,
    )  # fmt: skip
    save_turntable(args.out, turntable, fps=20.0)
    train = psnr_table(views, fitted, result.train_psnr)
    document = {
        "command": "fit",
        "views": str(args.views),
        "fit": json.loads(json.dumps(dataclasses.asdict(config))),
        "initial_gaussians": args.gaussians,
        "gaussians": result.scene.num_gaussians,
        "train_psnr": train,
        "held_out_psnr": None
        if result.test_psnr is None
        else psnr_table(views, held_out, result.test_psnr),
        "fit_seconds": result.seconds,
        "wall_seconds": time.perf_counter() - started,
        "turntable": orbit | {"views": args.turntable_views},
        "device": device,
        "generation": info,
    }
    (args.out / "fit.json").write_text(json.dumps(document, indent=2) + "\n")
    mean = "inf" if train["mean"] is None else f"{train['mean']:.2f}"
    print(
        f"{result.scene.num_gaussians} Gaussians fitted to {len(fitted)} views in "
        f"{result.seconds:.1f} s (train PSNR {mean} dB): {args.out}/scene.ply, fit.json, "
        "turntable.gif"
    )
