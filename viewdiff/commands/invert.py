"""``infer.py invert``: real views into the edit-friendly noise space (edit-friendly DDPM
inversion, Huberman-Spiegelglas et al., CVPR 2024), with the multi-view prior (N posed views
jointly) or any Stable Diffusion folder (single views).

Writes into ``--out``: the inversion (``viewdiff.editing.inversion_folder``), ``cameras.json``
(multi-view), ``inputs/`` (the views as inverted), ``reconstruction/`` and
``reconstruction.json`` (PSNR per view against the input and against its VAE round trip, which
the reconstruction should equal), and ``grid.png`` (inputs over reconstructions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from viewdiff.commands.options import (
    MAX_DENOISING_STEPS,
    add_base_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_dtype_argument,
    add_out_argument,
    add_seed_argument,
    int_in,
    nonnegative_float,
)
from viewdiff.config import SampleConfig
from viewdiff.editing.editing_model import check_editing_model, denoiser, load_editing_model
from viewdiff.editing.inversion import generate, invert
from viewdiff.editing.inversion_folder import FORMAT, save_inversion
from viewdiff.inference.inputs import (
    centre_square,
    image_tensor,
    load_given_views,
    load_single_view,
    read_image,
)
from viewdiff.inference.outputs import output_folder, write_views
from viewdiff.inference.trajectory import Trajectory, default_input_camera, read_trajectory
from viewdiff.prior.call import decode_latents, encode_images
from viewdiff.prior.load import chosen_device, read_export
from viewdiff.run_lock import lock_folder
from viewdiff.scene.losses import psnr
from viewdiff.visualize import image_grid, to_pil

INVERSION_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def add_invert_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py invert``: edit-friendly DDPM inversion of real views."""
    parser = commands.add_parser("invert", help="invert real views into DDPM noise maps")
    add_checkpoint_argument(
        parser, help="inference export, or any diffusers SD folder (single views)"
    )
    add_base_argument(parser)
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="the views")
    parser.add_argument("--cameras", type=Path, help="cameras.json of the views (multi-view)")
    parser.add_argument("--prompt", default="", help="source text (what the views show)")
    add_out_argument(parser)
    parser.add_argument(
        "--steps", type=int_in(2, MAX_DENOISING_STEPS), default=100, help="DDPM steps (paper: 100)"
    )
    parser.add_argument(
        "--cfg-src", type=nonnegative_float, default=3.5, help="source guidance (3.5)"
    )
    add_seed_argument(parser, help="seed of the independent noises")
    add_device_argument(parser)
    add_dtype_argument(parser, INVERSION_DTYPES)
    parser.set_defaults(run=run_invert)


def input_views(
    args: argparse.Namespace, kind: str, size: int, sample: SampleConfig | None
) -> tuple[torch.Tensor, Trajectory | None]:
    """The views (M, 3, S, S) in [-1, 1] and their cameras (multi-view), checked."""
    if args.cameras is not None:
        cameras = read_trajectory(args.cameras)
        return load_given_views(args.images, cameras, (size, size))
    if kind == "multiview" and len(args.images) > 1:
        raise ValueError(f"{len(args.images)} views need their cameras: --cameras FILE")
    if kind == "sd":  # each image on its own: its centred square at the model's size
        views = [image_tensor(centre_square(read_image(path), size)) for path in args.images]
        return torch.stack(views), None
    if sample is None:  # a caller's mistake: a multi-view export always has one
        raise ValueError("a single view needs the export's sample config (its default camera)")
    camera = default_input_camera(sample.elevation_deg, sample.radius, size, sample.fov_deg)
    return load_single_view(args.images[0], camera)


def run_invert(args: argparse.Namespace) -> None:
    """Invert the views, check the reconstruction, write everything."""
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2, got {args.steps}")
    if not args.cfg_src >= 1.0:
        raise ValueError(f"--cfg-src must be >= 1, got {args.cfg_src}")
    out = output_folder(args.out)
    lock_folder(out, "infer.py invert")  # one writer per --out
    kind = check_editing_model(args.checkpoint, args.base)
    export = read_export(args.checkpoint, args.base) if kind == "multiview" else None
    sample = None if export is None else export.config.sample
    size = export.config.data.image_size if export is not None else _sd_image_size(args.checkpoint)
    images, cameras = input_views(args, kind, size, sample)
    device = chosen_device(args.device)
    editing = load_editing_model(args.checkpoint, device, base=args.base)
    dtype = INVERSION_DTYPES[args.dtype]
    x0 = encode_images(editing.vae, images[None], sample=False).to(dtype)  # (M, C, h, w)
    scheduler = editing.scheduler()
    denoise = denoiser(editing, args.prompt, args.cfg_src, cameras)
    generator = torch.Generator().manual_seed(args.seed)
    inversion = invert(denoise, scheduler, x0, args.steps, generator, show_progress=True)
    reconstruction = generate(denoise, scheduler, inversion, skip=0, show_progress=True)
    save_inversion(
        out,
        inversion,
        {
            "format": FORMAT,
            "checkpoint": str(args.checkpoint.resolve()),
            "base": None if args.base is None else str(args.base.resolve()),
            "kind": kind,
            "prompt": args.prompt,
            "cfg_src": args.cfg_src,
            "steps": args.steps,
            "seed": args.seed,
            "scheduler": "DDIM at eta = 1 (DDPM posterior on the grid)",
            "image_size": size,
            "dtype": args.dtype,
            "inputs": [str(p) for p in args.images],
            "max_latent_error": float((reconstruction - x0).abs().max()),
        },
        cameras,
    )
    decoded = decode_latents(editing.vae, reconstruction.float())
    roundtrip = decode_latents(editing.vae, x0.float())
    psnr_vs_input = [_psnr(a, b) for a, b in zip(decoded, images, strict=True)]
    scores = {
        "psnr_vs_input": psnr_vs_input,
        "psnr_vs_vae_roundtrip": [_psnr(a, b) for a, b in zip(decoded, roundtrip, strict=True)],
        "max_latent_error": float((reconstruction - x0).abs().max()),
    }
    (out / "reconstruction.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_views(out / "inputs", images)
    write_views(out / "reconstruction", decoded)
    image_grid([to_pil(x) for x in torch.cat([images, decoded])], len(images)).save(
        out / "grid.png"
    )
    mean = sum(psnr_vs_input) / len(images)
    print(
        f"{len(images)} views inverted ({args.steps} steps): reconstruction {mean:.2f} dB vs the "
        f"inputs, max latent error {scores['max_latent_error']:.2e}; {out}/"
    )


def _sd_image_size(checkpoint: Path) -> int:
    """A Stable Diffusion folder's native image side, from its UNet config."""
    unet = json.loads((checkpoint / "unet" / "config.json").read_text())
    return int(unet["sample_size"]) * 8


def _psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR (dB) of two images in [-1, 1]."""
    return psnr((image.cpu() + 1) / 2, (target.cpu() + 1) / 2)
