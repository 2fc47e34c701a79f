"""``infer.py edit-scene``: edit a 3D Gaussian scene from a text instruction with TrAME.

Writes into ``--out``: ``scene.ply`` (the edited scene, 3DGS layout), ``before_after.gif`` /
``.mp4`` and ``frames/`` (original | edited turntable, side by side), ``progress/step-KK.png``
(per trajectory step: pseudo ground truth over the scene's renders), ``edit.json`` (the config,
the plan, per-step timings and losses, the metrics of ``viewdiff.trame.metrics``), tensorboard
scalars in ``logs/`` and ``checkpoint/`` after every step for ``--resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from viewdiff.commands.options import (
    MAX_DENOISING_STEPS,
    MAX_VIEWS,
    add_base_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_out_argument,
    add_resume_argument,
    add_seed_argument,
    denoising_steps,
    finite_float,
    int_in,
    nonnegative_float,
    positive_int,
    resume_folder,
    view_count,
)
from viewdiff.editing.editing_model import check_editing_model, load_editing_model
from viewdiff.inference.outputs import output_folder
from viewdiff.inference.trajectory import orbit_trajectory, read_trajectory
from viewdiff.prior.load import chosen_device, read_export
from viewdiff.run_lock import lock_folder
from viewdiff.scene.checkpoint import CHECKPOINT
from viewdiff.scene.gaussians import read_gaussian_ply, write_gaussian_ply
from viewdiff.scene.turntable import mp4_available, render_turntable, write_gif, write_mp4
from viewdiff.trame.attention_control import word_positions
from viewdiff.trame.clip_similarity import ClipDirection
from viewdiff.trame.config import TrameConfig
from viewdiff.trame.editor import TrameEditor
from viewdiff.trame.metrics import edit_metrics
from viewdiff.trame.region import attention_maps, lift_region
from viewdiff.visualize import image_grid, to_pil


def add_edit_scene_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py edit-scene``: TrAME editing of a Gaussian scene."""
    parser = commands.add_parser(
        "edit-scene",
        help="edit a 3D Gaussian scene from text (TrAME)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_argument(parser)
    add_base_argument(parser)
    parser.add_argument("--scene", type=Path, required=True, help="3DGS PLY to edit")
    parser.add_argument("--cameras", type=Path, help="cameras.json of the edit views (ordered)")
    parser.add_argument(
        "--views", type=view_count, default=16, help="orbit views without --cameras"
    )
    parser.add_argument("--source-prompt", required=True, help="what the scene shows")
    parser.add_argument("--prompt", required=True, help="what it should show")
    add_out_argument(parser)
    parser.add_argument(
        "--region",
        type=finite_float,
        nargs=6,
        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
        help="edit only the Gaussians in this box (default: the whole object)",
    )
    parser.add_argument(
        "--attention-region",
        action="store_true",
        help="edit the Gaussians that the prior's cross-attention to the changed words votes for",
    )
    parser.add_argument("--words", nargs="+", help="words whose attention traces the region")
    parser.add_argument("--steps", type=denoising_steps, help="DDIM grid (20)")
    parser.add_argument(
        "--start", type=int_in(0, MAX_DENOISING_STEPS), help="first grid step run (10)"
    )
    parser.add_argument("--guidance", type=nonnegative_float, help="CFG of both branches (7.5)")
    parser.add_argument("--keyframe-every", type=positive_int, help="a keyframe every K views (4)")
    parser.add_argument("--sampler", choices=("ddcm", "ddpm"), help="virtual inversion (ddcm)")
    parser.add_argument(
        "--held-out",
        type=int_in(0, MAX_VIEWS - 1),
        nargs="+",
        default=[],
        help="edit views the 3D updates never see (measured: held_out_psnr)",
    )
    parser.add_argument("--no-tas", action="store_true", help="ablation: 2D edit, then 3D fit")
    parser.add_argument("--no-vcac", action="store_true", help="ablation: no attention control")
    parser.add_argument("--clip", type=Path, help="a CLIP folder: adds CLIP directional similarity")
    add_seed_argument(parser)
    add_device_argument(parser)
    add_resume_argument(parser)
    parser.set_defaults(run=run_edit_scene)


def trame_config(args: argparse.Namespace) -> TrameConfig:
    """The defaults with the flags given."""
    changes = {
        "steps": args.steps,
        "start": args.start,
        "guidance": args.guidance,
        "keyframe_every": args.keyframe_every,
        "sampler": args.sampler,
    }
    config = TrameConfig(**{k: v for k, v in changes.items() if v is not None})
    return dataclasses.replace(
        config,
        tas=not args.no_tas,
        vcac=not args.no_vcac,
        seed=args.seed,
        held_out=tuple(args.held_out),
    )


def run_edit_scene(args: argparse.Namespace) -> None:
    """Check everything, edit, write."""
    out = output_folder(args.out)
    lock_folder(out, "infer.py edit-scene")  # one run per --out: it resumes from its checkpoint
    if check_editing_model(args.checkpoint, args.base) != "multiview":
        raise ValueError(f"--checkpoint {args.checkpoint}: TrAME needs a multi-view export")
    export = read_export(args.checkpoint, args.base)
    config = trame_config(args)
    if not args.scene.is_file():
        raise ValueError(f"--scene {args.scene}: no such file")
    device = chosen_device(args.device)
    scene = read_gaussian_ply(args.scene, device=device)
    size = export.config.data.image_size
    sample = export.config.sample
    if args.cameras is not None:
        cameras = read_trajectory(args.cameras)
    else:
        cameras = orbit_trajectory(args.views, sample.elevation_deg, sample.radius, size,
                                   sample.fov_deg)  # fmt: skip
    selected = None
    if args.region is not None:
        low, high = torch.tensor(args.region[:3]), torch.tensor(args.region[3:])
        if not bool((low < high).all()):
            raise ValueError(f"--region: the box's min corner {low.tolist()} is not below its max")
        means = scene.means.detach().cpu()
        selected = ((means >= low) & (means <= high)).all(1)
        if not bool(selected.any()):
            raise ValueError(f"--region {args.region}: no Gaussian of {args.scene} is inside it")
    clip = None if args.clip is None else ClipDirection(args.clip, device)
    editing = load_editing_model(args.checkpoint, device, base=args.base)
    editor = TrameEditor(editing, scene, cameras, args.source_prompt, args.prompt, config,
                         selected)  # fmt: skip
    if args.attention_region or args.words:
        words = None
        if args.words:
            tokenizer = editing.tokenizer
            words = (word_positions(tokenizer, args.source_prompt, args.words),
                     word_positions(tokenizer, args.prompt, args.words))  # fmt: skip
            if not words[0] and not words[1]:
                raise ValueError(f"--words {' '.join(args.words)}: in neither prompt")
        maps = attention_maps(editor.prior, editor.src0, words)
        traced = lift_region(maps, editor.original.means, cameras)
        if selected is not None:
            traced &= selected.to(traced.device)
        editor.set_region(traced)
        write_maps(out / "attention_region.png", maps, editor)
    resume = resume_folder(args, CHECKPOINT)
    if resume is not None:
        editor.load(resume)
    logs = SummaryWriter(str(out / "logs"))
    started = time.perf_counter()
    steps = config.trajectory_steps
    bar = tqdm(total=len(steps), initial=editor.position, desc="TrAME steps")
    while not editor.done:
        report = editor.step()
        write_progress(out / "progress" / f"step-{report.k:02d}.png", editor)
        editor.save(out / CHECKPOINT)
        logs.add_scalar("trame/update_loss", report.loss, report.k)
        logs.add_scalar("trame/seconds", report.seconds, report.k)
        bar.update(1)
        bar.set_postfix(t=report.timestep, loss=f"{report.loss:.4f}")
    bar.close()
    edited = editor.scene()
    write_gaussian_ply(out / "scene.ply", edited)
    orbit = orbit_trajectory(24, sample.elevation_deg, sample.radius, size, sample.fov_deg)
    metrics = edit_metrics(editor, orbit, clip)
    metrics.pop("orbit_renders")
    write_before_after(out, editor, sample, size)
    info = {
        "checkpoint": str(args.checkpoint),
        "scene": str(args.scene),
        "source_prompt": args.source_prompt,
        "prompt": args.prompt,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "plan": dataclasses.asdict(editor.plan),
        "steps": [dataclasses.asdict(r) for r in editor.reports],
        "metrics": metrics,
        "seconds": time.perf_counter() - started,
    }
    (out / "edit.json").write_text(json.dumps(info, indent=2) + "\n")
    logs.close()
    print(
        f"{args.scene} edited to {args.prompt!r}: 3D consistency {metrics['consistency_psnr']:.2f}"
        f" dB, outside the object {metrics['outside_psnr']:.2f} dB; {out}/scene.ply"
    )


def write_maps(path: Path, maps: torch.Tensor, editor: TrameEditor) -> None:
    """The renders over the attention maps over the traced region's masks."""
    masks = editor.masks[:, 0]
    grey = [m[None].expand(3, -1, -1) * 2 - 1 for m in torch.cat([maps.cpu(), masks.cpu()])]
    renders = [x * 2 - 1 for x in editor.original_renders.cpu()]
    image_grid([to_pil(x) for x in renders + grey], len(renders)).save(path)


def write_progress(path: Path, editor: TrameEditor) -> None:
    """The pseudo ground truth over the scene's renders, every edit view."""
    path.parent.mkdir(parents=True, exist_ok=True)
    renders = editor.render_all(editor.scene())
    images = torch.cat([editor.pseudo_ground_truth(), renders]) * 2 - 1
    image_grid([to_pil(x) for x in images], len(renders)).save(path)


def write_before_after(out: Path, editor: TrameEditor, sample, size: int) -> None:
    """frames/ and before_after.gif (+ .mp4): original | edited turntables side by side."""
    background = tuple(editor.config.background)
    views = {"radius": sample.radius, "elevation_deg": sample.elevation_deg,
             "fov_deg": sample.fov_deg, "size": size, "background": background,
             "progress": False}  # fmt: skip
    before = render_turntable(editor.original, 48, **views).frames
    after = render_turntable(editor.scene(), 48, **views).frames
    frames = np.concatenate([before, after], axis=2)  # (V, H, 2W, 3)
    (out / "frames").mkdir(exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(out / "frames" / f"frame_{index:03d}.png")
    write_gif(out / "before_after.gif", frames)
    if mp4_available():
        write_mp4(out / "before_after.mp4", frames)
