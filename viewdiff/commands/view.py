"""``infer.py view``: what the commands wrote, in the browser (viser).

Each PATH is a 3DGS PLY (any tool's), a generation folder (views/*.png + cameras.json: sample,
condition, edit, invert), an ``infer.py sds`` or an ``infer.py edit-scene`` folder, or a folder
of generation folders: the splats, the cameras as frustums with their views, the object box, the
progress pictures of a run and the original of an edit. Several PATHs stand side by side
(``--layout side``) or one at a time (``--layout toggle``). ``--checkpoint EXPORT`` adds a panel
that generates views and distils scenes in the page. ``--screenshot OUT.png`` writes a picture
of the page (headless Chromium) and exits; otherwise it serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from viewdiff.commands.options import (
    DTYPES,
    MAX_IMAGE_SIZE,
    add_base_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_dtype_argument,
    int_in,
)
from viewdiff.config import load_config
from viewdiff.prior.load import chosen_device, read_export

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080  # as viewdiff.viewer.server's (viser not imported)
DEFAULT_SIZE = (800, 600)


def window_size(text: str) -> tuple[int, int]:
    """``WxH`` in pixels, e.g. 800x600."""
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT in pixels, e.g. 800x600, got {text!r}"
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= MAX_IMAGE_SIZE and 1 <= height <= MAX_IMAGE_SIZE):
        raise argparse.ArgumentTypeError(f"sides must be in [1, {MAX_IMAGE_SIZE}], got {text}")
    return width, height


def add_view_command(commands: argparse._SubParsersAction) -> None:
    """``infer.py view``: scenes, views and runs in the browser."""
    parser = commands.add_parser(
        "view",
        help="see scenes, generated views and SDS / edit runs in the browser (viser)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="PLY, generation, sds or edit-scene"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to serve on (%(default)s)")
    parser.add_argument(
        "--port",
        type=int_in(0, 65535),
        help=f"port ({DEFAULT_PORT}; 0 or --screenshot: a free one)",
    )
    parser.add_argument(
        "--layout", choices=("side", "toggle"), default="side",
        help="several PATHs side by side along x, or one at a time from a dropdown",
    )  # fmt: skip
    add_checkpoint_argument(parser, "an export: adds the generate / distil panel", default=None)
    add_base_argument(parser)
    parser.add_argument(
        "--sds-config", type=Path, help="SDS preset of the panel's Distil (configs/sds_*.yaml)"
    )
    add_device_argument(parser)
    add_dtype_argument(parser, help="the panel's model dtype")
    parser.add_argument("--screenshot", type=Path, metavar="OUT.png", help="write the page, exit")
    parser.add_argument(
        "--size", type=window_size, metavar="WxH", help="--screenshot's window (800x600)"
    )
    parser.set_defaults(run=run_view)


def check_view_args(args: argparse.Namespace) -> None:
    """Refuse what cannot be shown before anything starts."""
    if not args.paths and args.checkpoint is None:
        raise ValueError("nothing to show: give a PATH, or --checkpoint EXPORT for the panel")
    if args.size is not None and args.screenshot is None:
        raise ValueError("--size is the --screenshot window's: give --screenshot OUT.png too")
    screenshot = args.screenshot
    if screenshot is not None and (screenshot.suffix.lower() != ".png" or screenshot.is_dir()):
        raise ValueError(f"--screenshot {args.screenshot}: expected a .png file to write")
    if args.checkpoint is not None:
        read_export(args.checkpoint, args.base)  # no weights: they load at the first job
        chosen_device(args.device)
        load_config(args.sds_config)


def run_view(args: argparse.Namespace) -> None:
    """Check the PATHs, serve them, then take the screenshot or wait for Ctrl-C."""
    check_view_args(args)
    try:
        import viser  # noqa: F401  (the viewer extra)
    except ImportError:
        raise ValueError("infer.py view needs viser: pip install 'viewdiff[viewer]'") from None
    from viewdiff.viewer.live import LivePanel
    from viewdiff.viewer.scene import show_sources
    from viewdiff.viewer.server import server_url, start_server, tunnel_hint
    from viewdiff.viewer.sources import load_sources

    sources = load_sources(args.paths)  # every PATH read before the server starts
    port = args.port if args.port is not None else (0 if args.screenshot else DEFAULT_PORT)
    server = start_server(args.host, port)
    try:
        state = show_sources(server, sources, args.layout)
        if args.checkpoint is not None:
            LivePanel(state, args.checkpoint, args.base, args.device, DTYPES[args.dtype],
                      args.sds_config)  # fmt: skip
        url = server_url(server)
        shown = ", ".join(
            f"{name} ({c['splats']} Gaussians, {c['frustums']} cameras)"
            for name, c in state.counts().items()
        )
        if args.screenshot is not None:
            take_screenshot(url, args.screenshot, args.size or DEFAULT_SIZE)
            print(f"{args.screenshot}: {shown or 'the panel'}")
            return
        print(f"viewer on {url}: {shown or 'the generate / distil panel'}; Ctrl-C stops it")
        print(tunnel_hint(server.get_port()))
        wait_for_interrupt()
    finally:
        server.stop()


def take_screenshot(url: str, out: Path, size: tuple[int, int]) -> None:
    """A PNG of the page at ``url`` from a headless Chromium; any failure is one line."""
    try:
        from viewdiff.viewer.browser import screenshot
    except ImportError as error:
        raise ValueError(f"--screenshot needs the browser helper: {error}") from None
    try:
        screenshot(url, out, size=size)
    except Exception as error:  # no Chromium, no playwright, a page that never drew
        raise ValueError(f"--screenshot {out}: {type(error).__name__}: {error}") from None


def wait_for_interrupt() -> None:
    """Block until Ctrl-C."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped")
