"""``infer.py invert`` and ``infer.py edit``: real views into the edit-friendly noise space and out
again with another prompt.

invert writes into ``--out``: ``inversion.safetensors`` (xs (N+1, R, C, h, w), zs (N, R, C, h, w),
timesteps, known), ``inversion.json`` (format, the checkpoint, kind, prompt, cfg_src, steps, seed,
scheduler, image size, inputs), ``cameras.json`` (multi-view), ``inputs/`` (the views as inverted),
``reconstruction/`` and ``reconstruction.json`` (PSNR per view against the input and against its
VAE round trip, which the reconstruction should equal), and ``grid.png`` (inputs over
reconstructions). edit writes ``views/``, ``grid.png``, ``before_after.png`` (inputs over edits),
``cameras.json`` and ``edit.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from viewdiff.cameras_json import write_cameras
from viewdiff.commands.options import (
    BASE_HELP,
    MAX_DENOISING_STEPS,
    existing_folder,
    int_in,
    nonnegative_float,
)
from viewdiff.config import SampleConfig
from viewdiff.editing.editing_model import (
    check_editing_model,
    denoiser,
    load_editing_model,
)
from viewdiff.editing.inversion import Inversion, generate, invert
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
from viewdiff.scene.losses import psnr
from viewdiff.visualize import image_grid, to_pil

FORMAT = "viewdiff.inversion/1"
TENSORS, DOCUMENT = "inversion.safetensors", "inversion.json"
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def add_invert_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py invert``: edit-friendly DDPM inversion of real views."""
    parser = commands.add_parser("invert", help="invert real views into DDPM noise maps")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="inference export, or any diffusers SD folder (single views)",
    )
    parser.add_argument("--base", type=existing_folder, metavar="DIR", help=BASE_HELP)
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="the views")
    parser.add_argument("--cameras", type=Path, help="cameras.json of the views (multi-view)")
    parser.add_argument("--prompt", default="", help="source text (what the views show)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--steps", type=int_in(2, MAX_DENOISING_STEPS), default=100, help="DDPM steps (paper: 100)"
    )
    parser.add_argument(
        "--cfg-src", type=nonnegative_float, default=3.5, help="source guidance (3.5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the independent noises")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.set_defaults(run=run_invert)


def add_edit_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py edit``: regenerate inverted views with a target prompt."""
    parser = commands.add_parser("edit", help="edit inverted views with a target prompt")
    parser.add_argument("--inversion", type=Path, required=True, help="an infer.py invert folder")
    parser.add_argument("--prompt", required=True, help="target text")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--skip",
        type=int_in(0, MAX_DENOISING_STEPS),
        default=36,
        help="T_skip: noisiest steps skipped (36)",
    )
    parser.add_argument(
        "--cfg-tar", type=nonnegative_float, default=15.0, help="target guidance (15)"
    )
    parser.add_argument("--checkpoint", type=Path, help="the model (default: the inversion's)")
    parser.add_argument(
        "--base",
        type=existing_folder,
        metavar="DIR",
        help=BASE_HELP + " (default: the inversion's)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.set_defaults(run=run_edit)


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
    camera = default_input_camera(sample.elevation_deg, sample.radius, size, sample.fov_deg)
    return load_single_view(args.images[0], camera)


def run_invert(args: argparse.Namespace) -> None:
    """Invert the views, check the reconstruction, write everything."""
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2, got {args.steps}")
    if not args.cfg_src >= 1.0:
        raise ValueError(f"--cfg-src must be >= 1, got {args.cfg_src}")
    out = output_folder(args.out)
    kind = check_editing_model(args.checkpoint, args.base)
    export = read_export(args.checkpoint, args.base) if kind == "multiview" else None
    sample = None if export is None else export.config.sample
    size = export.config.data.image_size if export is not None else _sd_image_size(args.checkpoint)
    images, cameras = input_views(args, kind, size, sample)
    device = chosen_device(args.device)
    editing = load_editing_model(args.checkpoint, device, base=args.base)
    dtype = DTYPES[args.dtype]
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
    )
    if cameras is not None:
        write_cameras(out / "cameras.json", cameras.K, cameras.w2c, cameras.image_size_hw)
    decoded = decode_latents(editing.vae, reconstruction.float())
    roundtrip = decode_latents(editing.vae, x0.float())
    scores = {
        "psnr_vs_input": [_psnr(a, b) for a, b in zip(decoded, images, strict=True)],
        "psnr_vs_vae_roundtrip": [_psnr(a, b) for a, b in zip(decoded, roundtrip, strict=True)],
        "max_latent_error": float((reconstruction - x0).abs().max()),
    }
    (out / "reconstruction.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_views(out / "inputs", images)
    write_views(out / "reconstruction", decoded)
    image_grid([to_pil(x) for x in torch.cat([images, decoded])], len(images)).save(
        out / "grid.png"
    )
    mean = sum(scores["psnr_vs_input"]) / len(images)
    print(
        f"{len(images)} views inverted ({args.steps} steps): reconstruction {mean:.2f} dB vs the "
        f"inputs, max latent error {scores['max_latent_error']:.2e}; {out}/"
    )


def run_edit(args: argparse.Namespace) -> None:
    """Regenerate an inversion with the target prompt and guidance."""
    document, inversion = read_inversion(args.inversion)
    if not 0 <= args.skip < inversion.num_steps:
        raise ValueError(f"--skip must be in [0, {inversion.num_steps}), got {args.skip}")
    out = output_folder(args.out)
    checkpoint = args.checkpoint or Path(document["checkpoint"])
    base = args.base or (Path(document["base"]) if document.get("base") else None)
    kind = check_editing_model(checkpoint, base)
    if kind != document["kind"]:
        raise ValueError(
            f"{checkpoint} is a {kind} model; the inversion was made by a {document['kind']} one"
        )
    cameras = None
    if kind == "multiview":
        cameras = read_trajectory(args.inversion / "cameras.json")
    editing = load_editing_model(checkpoint, chosen_device(args.device), base=base)
    inversion = _to(inversion, editing.device)
    denoise = denoiser(editing, args.prompt, args.cfg_tar, cameras)
    edited = generate(denoise, editing.scheduler(), inversion, args.skip, show_progress=True)
    views = decode_latents(editing.vae, edited.float())
    before = decode_latents(editing.vae, inversion.xs[-1].float())
    write_views(out / "views", views)
    image_grid([to_pil(x) for x in views]).save(out / "grid.png")
    image_grid([to_pil(x) for x in torch.cat([before, views])], len(views)).save(
        out / "before_after.png"
    )
    if cameras is not None:
        write_cameras(out / "cameras.json", cameras.K, cameras.w2c, cameras.image_size_hw)
    info = {
        "inversion": str(args.inversion),
        "source_prompt": document["prompt"],
        "prompt": args.prompt,
        "skip": args.skip,
        "cfg_tar": args.cfg_tar,
        "checkpoint": str(checkpoint),
    }
    (out / "edit.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"{len(views)} views edited to {args.prompt!r} (skip {args.skip}, cfg {args.cfg_tar}): "
        f"{out}/before_after.png"
    )


def save_inversion(out: Path, inversion: Inversion, document: dict) -> None:
    """inversion.safetensors and inversion.json."""
    save_file(
        {
            "xs": inversion.xs.cpu().contiguous(),
            "zs": inversion.zs.cpu().contiguous(),
            "timesteps": inversion.timesteps.cpu(),
            "known": inversion.known.cpu(),
        },
        out / TENSORS,
    )
    (out / DOCUMENT).write_text(json.dumps(document, indent=2) + "\n")


def read_inversion(folder: Path) -> tuple[dict, Inversion]:
    """An invert folder's document and tensors, checked; a ValueError names what is wrong."""
    if not Path(folder).is_dir():
        raise ValueError(f"--inversion {folder}: not a folder")
    path = folder / DOCUMENT
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    try:
        tensors = load_file(folder / TENSORS)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{folder / TENSORS}: cannot read: {error}") from None
    missing = [k for k in ("xs", "zs", "timesteps", "known") if k not in tensors]
    if missing:
        raise ValueError(f"{folder / TENSORS}: no {', '.join(missing)}")
    xs, zs, timesteps = tensors["xs"], tensors["zs"], tensors["timesteps"]
    n = timesteps.shape[0]
    if xs.shape[0] != n + 1 or zs.shape[0] != n or xs.shape[1:] != zs.shape[1:]:
        raise ValueError(
            f"{folder / TENSORS}: xs {tuple(xs.shape)}, zs {tuple(zs.shape)} and "
            f"{n} timesteps do not fit together"
        )
    if document.get("kind") == "multiview" and not (folder / "cameras.json").is_file():
        raise ValueError(f"{folder}: a multi-view inversion without its cameras.json")
    return document, Inversion(timesteps, xs, zs, tensors["known"])


def _to(inversion: Inversion, device: torch.device) -> Inversion:
    """The inversion's latents on ``device``."""
    return Inversion(
        inversion.timesteps, inversion.xs.to(device), inversion.zs.to(device), inversion.known
    )


def _sd_image_size(checkpoint: Path) -> int:
    """A Stable Diffusion folder's native image side, from its UNet config."""
    unet = json.loads((checkpoint / "unet" / "config.json").read_text())
    return int(unet["sample_size"]) * 8


def _psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR (dB) of two images in [-1, 1]."""
    return psnr((image.cpu() + 1) / 2, (target.cpu() + 1) / 2)
