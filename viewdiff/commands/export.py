"""``infer.py export``: a generation folder as the input of another 3D tool.

Writes into ``--out`` a self-contained dataset: the views copied into ``images/`` and their
cameras in the tool's format (conversions and the conventions behind them in
``viewdiff.scene.camera_export``):

  nerfstudio    transforms.json (camera_model OPENCV; ``ns-train splatfacto --data OUT``)
  instant-ngp   transforms.json (aabb_scale 1; ``./instant-ngp OUT``)
  colmap        sparse/0/{cameras,images,points3D}.txt, a text model of known poses and no
                points: run COLMAP's point_triangulator on it before a loader that needs points

Generation folders hold no masks, so no ``mask_path`` is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from viewdiff.commands.options import add_out_argument
from viewdiff.inference.outputs import output_folder
from viewdiff.inference.read_generation import GenerationViews, read_generation_views
from viewdiff.output_folders import check_output_folder
from viewdiff.scene.camera_export import colmap_text_model, transforms_json

FORMATS = ("nerfstudio", "instant-ngp", "colmap")
IMAGES_DIR = "images"
COLMAP_MODEL_DIR = Path("sparse") / "0"


def add_export_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py export``: the views and cameras of a generation for nerfstudio, instant-ngp
    or COLMAP."""
    parser = commands.add_parser(
        "export",
        help="export generated views and cameras for nerfstudio, instant-ngp or COLMAP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--views", type=Path, required=True, metavar="DIR", help="generation folder"
    )
    parser.add_argument("--format", choices=FORMATS, required=True, help="the tool to feed")
    add_out_argument(parser, metavar="DIR")
    parser.set_defaults(run=run_export)


def copy_images(views: GenerationViews, out: Path) -> list[str]:
    """Copy the views into ``out/images/``; their paths relative to ``out``, POSIX style."""
    folder = out / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for path in views.paths:
        shutil.copyfile(path, folder / path.name)
    return [f"{IMAGES_DIR}/{path.name}" for path in views.paths]


def run_export(args: argparse.Namespace) -> None:
    """Check the generation folder, then write the images and the cameras of ``--format``."""
    check_output_folder(args.out)  # first: --out that is a file fails before any copying
    views = read_generation_views(args.views)
    output_folder(args.out)
    relative = copy_images(views, args.out)
    if args.format == "colmap":
        names = [Path(path).name for path in relative]  # relative to images/
        model = colmap_text_model(views.K, views.w2c, views.image_size_hw, names)
        (args.out / COLMAP_MODEL_DIR).mkdir(parents=True, exist_ok=True)
        for name, text in model.items():
            (args.out / COLMAP_MODEL_DIR / name).write_text(text)
        written = f"{COLMAP_MODEL_DIR.as_posix()}/{{cameras,images,points3D}}.txt"
    else:
        document = transforms_json(views.K, views.w2c, views.image_size_hw, relative, args.format)
        (args.out / "transforms.json").write_text(json.dumps(document, indent=2) + "\n")
        written = "transforms.json"
    print(f"{len(views)} views for {args.format}: {args.out}/{IMAGES_DIR}/, {written}")
