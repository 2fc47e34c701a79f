"""Use a trained multi-view prior: ``python infer.py <command> ...`` (installed:
``viewdiff-infer <command> ...``).

Commands:
  cameras   write an orbit trajectory (or check a cameras.json) and draw the object box from
            every view, to see where the cameras look before spending GPU time on them
  render    render a 3D Gaussian scene (3DGS PLY) around an orbit: PNG frames, GIF/MP4, cameras
  sample    generate posed views of objects from text (one batch, or a sliding window for
            many views): PNGs, a grid, a turntable GIF/MP4 and cameras.json
  condition generate novel views of the object in one or more input images, same outputs
  eval      novel-view synthesis on held-out shards: PSNR/SSIM with and without masks
  fit       fit a 3D Gaussian scene (3DGS PLY) to a folder of generated views
  export    a folder of generated views for nerfstudio / instant-ngp (transforms.json) or COLMAP
  push      an export on the Hugging Face Hub, with a generated model card
  sds       text-to-3D / image-to-3D: distil a 3D Gaussian scene by score distillation
  invert    edit-friendly DDPM inversion of real views (one, or N posed views jointly)
  edit      regenerate an inversion with a target prompt
  edit-scene  TrAME: edit a 3D Gaussian scene with the multi-view prior
  view      see scenes, generated views and SDS / edit runs in the browser (viser)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from viewdiff.commands.cameras import add_cameras_command
from viewdiff.commands.condition import add_condition_command
from viewdiff.commands.edit import add_edit_command
from viewdiff.commands.edit_scene import add_edit_scene_command
from viewdiff.commands.evaluate import add_eval_command
from viewdiff.commands.export import add_export_command
from viewdiff.commands.fit import add_fit_command
from viewdiff.commands.invert import add_invert_command
from viewdiff.commands.push import add_push_command
from viewdiff.commands.render import add_render_command
from viewdiff.commands.sample import add_sample_command
from viewdiff.commands.sds import add_sds_command
from viewdiff.commands.view import add_view_command
from viewdiff.disk_full import DiskFullError
from viewdiff.run_lock import released_locks

# The subcommands in the order of --help; each module adds its parser and the function it runs.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_cameras_command,
    add_render_command,
    add_sample_command,
    add_condition_command,
    add_eval_command,
    add_fit_command,
    add_export_command,
    add_push_command,
    add_sds_command,
    add_invert_command,
    add_edit_command,
    add_edit_scene_command,
    add_view_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``infer.py`` with every subcommand."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with released_locks():  # the --out folder a command locked (viewdiff.run_lock)
            args.run(args)
    except DiskFullError as error:  # a checkpoint did not fit: the last complete one is intact
        parser.exit(1, f"infer.py {args.command}: {error}\n")
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:  # input errors only
        parser.exit(2, f"infer.py {args.command}: error: {error}\n")
    return 0


def console_main() -> None:
    """The ``viewdiff-infer`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
