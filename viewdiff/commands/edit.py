"""``infer.py edit``: an inversion (``infer.py invert``) regenerated with another prompt.

Writes ``views/``, ``grid.png``, ``before_after.png`` (inputs over edits), ``cameras.json`` and
``edit.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from viewdiff.cameras.cameras_json import write_cameras
from viewdiff.commands.options import (
    BASE_HELP,
    MAX_DENOISING_STEPS,
    add_base_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_out_argument,
    int_in,
    nonnegative_float,
)
from viewdiff.editing.editing_model import check_editing_model, denoiser, load_editing_model
from viewdiff.editing.inversion import generate
from viewdiff.editing.inversion_folder import inversion_to, read_inversion
from viewdiff.inference.outputs import output_folder, write_views
from viewdiff.inference.trajectory import read_trajectory
from viewdiff.prior.call import decode_latents
from viewdiff.prior.load import chosen_device
from viewdiff.visualize import image_grid, to_pil


def add_edit_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py edit``: regenerate inverted views with a target prompt."""
    parser = commands.add_parser("edit", help="edit inverted views with a target prompt")
    parser.add_argument("--inversion", type=Path, required=True, help="an infer.py invert folder")
    parser.add_argument("--prompt", required=True, help="target text")
    add_out_argument(parser)
    parser.add_argument(
        "--skip",
        type=int_in(0, MAX_DENOISING_STEPS),
        default=36,
        help="T_skip: noisiest steps skipped (36)",
    )
    parser.add_argument(
        "--cfg-tar", type=nonnegative_float, default=15.0, help="target guidance (15)"
    )
    add_checkpoint_argument(parser, help="the model (default: the inversion's)", default=None)
    add_base_argument(parser, BASE_HELP + " (default: the inversion's)")
    add_device_argument(parser)
    parser.set_defaults(run=run_edit)


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
    inversion = inversion_to(inversion, editing.device)
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
