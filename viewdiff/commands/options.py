"""What the command lines share: numbers are checked by argparse itself (exit 2 with the
flag's name, never read as "the default"): counts are whole numbers in a range, floats are
finite and in their range; output folders are checked before any compute."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from viewdiff.config import Config, load_config
from viewdiff.strict_config import ConfigError, describe_fields

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""``--dtype`` of the commands that run the prior."""

MAX_VIEWS = 1000
"""More views than this in one command is a typo (0.36 degrees apart on an orbit)."""
MAX_DENOISING_STEPS = 1000
"""Stable Diffusion's training timesteps: a sampler cannot take more steps than that."""
MAX_IMAGE_SIZE = 4096
"""Pixels on a side; a generated image of 4096 px is a 512 x 512 latent, already past SD's."""

ArgumentContainer = argparse._ActionsContainer
"""What ``add_argument`` is called on: a parser or one of its argument groups."""


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, object counts, Gaussians)."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (worker counts, skipped steps)."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def int_in(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]; ``why`` says where ``high`` comes from."""

    def parse(text: str) -> int:
        value = _whole_number(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if value > high:
            reason = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"must be at most {high}{reason}, got {value}")
        return value

    parse.__name__ = f"int in [{low}, {high}]"
    return parse


view_count = int_in(1, MAX_VIEWS, "more is a typo; split the trajectory into several runs")
"""``--views``: 1 .. MAX_VIEWS."""
denoising_steps = int_in(1, MAX_DENOISING_STEPS, "the timesteps Stable Diffusion was trained with")
"""``--steps`` of a sampler: 1 .. MAX_DENOISING_STEPS."""
pixel_size = int_in(1, MAX_IMAGE_SIZE)
"""``--size`` / ``--image-size`` in pixels: 1 .. MAX_IMAGE_SIZE."""


def finite_float(text: str) -> float:
    """A finite float (angles, coordinates): NaN and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def float_in(
    low: float, high: float = math.inf, *, open_low: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (or (low, high] with ``open_low``)."""

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < low or (open_low and value == low) or value > high:
            left = "(" if open_low else "["
            right = "]" if math.isfinite(high) else ")"
            raise argparse.ArgumentTypeError(
                f"must be in {left}{low:g}, {high:g}{right}, got {value:g}"
            )
        return value

    parse.__name__ = "number"
    return parse


positive_float = float_in(0.0, open_low=True)
"""A finite float > 0 (radii, frame rates, learning-rate factors)."""
nonnegative_float = float_in(0.0)
"""A finite float >= 0 (guidance scales)."""
unit_float = float_in(0.0, 1.0)
"""A finite float in [0, 1] (colours)."""
field_of_view = float_in(0.0, 179.0, open_low=True)
"""Degrees of a pinhole's field of view: (0, 179]."""


BASE_HELP = (
    "the export's base pipeline (a diffusers SD folder), if it is neither beside the export "
    "nor where training read it"
)
"""``--base DIR`` of every command that loads an export."""


def existing_folder(text: str) -> Path:
    """A path that is a folder (``--base DIR``)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Give an entry point ``--config``, ``--print-config`` and ``key.sub=value`` overrides."""
    parser.add_argument("--config", type=Path, help="YAML preset (configs/*.yaml)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit (dry run)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override any config key (below)"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "config keys (set in a preset or as key.sub=value):\n" + "\n".join(
        describe_fields(Config)
    )


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The resolved config of parsed arguments; a bad preset or override exits with its error."""
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as error:
        parser.error(str(error))


# The options every command that reads an export, writes a folder or draws noise shares: one
# spelling, one type, one help text each.

DEVICE_HELP = "torch device (default: cuda if present)"
EXPORT_HELP = "inference export (<output_dir>/model)"


def add_checkpoint_argument(
    parser: ArgumentContainer, help: str = EXPORT_HELP, **kwargs: Any
) -> None:
    """``--checkpoint PATH`` (also spelled ``--export``): the inference export a command reads;
    required unless ``kwargs`` give a default."""
    kwargs.setdefault("required", "default" not in kwargs)
    parser.add_argument(
        "--checkpoint", "--export", dest="checkpoint", type=Path, help=help, **kwargs
    )


def add_base_argument(parser: ArgumentContainer, help: str = BASE_HELP) -> None:
    """``--base DIR``: the export's base pipeline, where it is neither beside it nor found."""
    parser.add_argument("--base", type=existing_folder, metavar="DIR", help=help)


def add_out_argument(parser: ArgumentContainer, help: str = "output folder", **kwargs: Any) -> None:
    """``--out PATH``: where a command writes (checked with ``check_output_folder``)."""
    kwargs.setdefault("required", "default" not in kwargs)
    parser.add_argument("--out", type=Path, help=help, **kwargs)


RESUME_FROM_OUT = Path("<OUT>/checkpoint")
"""``--resume`` given without a folder: the command's own ``--out``/checkpoint."""


def add_resume_argument(parser: ArgumentContainer) -> None:
    """``--resume [DIR]``, spelled the same by every command that checkpoints (sds, fit,
    edit-scene): alone, continue from OUT/checkpoint if a killed run left one (else start); with
    DIR, from that checkpoint folder."""
    parser.add_argument(
        "--resume",
        type=Path,
        nargs="?",
        const=RESUME_FROM_OUT,
        metavar="DIR",
        help="continue from a checkpoint folder (alone: OUT/checkpoint, if there)",
    )


def resume_folder(args: argparse.Namespace, checkpoint: str = "checkpoint") -> Path | None:
    """The checkpoint folder ``--resume`` asks for (None: start afresh)."""
    if args.resume is None:
        return None
    if args.resume == RESUME_FROM_OUT:
        folder = Path(args.out) / checkpoint
        return folder if folder.is_dir() else None
    return Path(args.resume)


def add_device_argument(parser: ArgumentContainer) -> None:
    """``--device``: the torch device (``viewdiff.prior.load.chosen_device``)."""
    parser.add_argument("--device", default=None, help=DEVICE_HELP)


def add_dtype_argument(
    parser: ArgumentContainer,
    dtypes: Mapping[str, torch.dtype] = DTYPES,
    help: str = "model dtype",
) -> None:
    """``--dtype``: one of ``dtypes`` by name (default fp32)."""
    parser.add_argument("--dtype", choices=list(dtypes), default="fp32", help=help)


def add_seed_argument(
    parser: ArgumentContainer, default: int | None = 0, help: str | None = None
) -> None:
    """``--seed N``: the seed of the run's random draws."""
    parser.add_argument("--seed", type=int, default=default, help=help)


def add_background_argument(
    parser: ArgumentContainer, help: str, default: tuple[float, float, float] | None = None
) -> None:
    """``--background R G B``: a colour in [0, 1] behind a Gaussian scene."""
    parser.add_argument(
        "--background",
        type=unit_float,
        nargs=3,
        default=default,
        metavar=("R", "G", "B"),
        help=help,
    )


def add_orbit_arguments(parser: ArgumentContainer, views: int, views_help: str) -> None:
    """``--views --elevation --radius --fov``: an orbit around the object box (cameras, render)."""
    parser.add_argument("--views", type=view_count, default=views, help=views_help)
    parser.add_argument(
        "--elevation", type=finite_float, default=30.0, help="degrees above the object"
    )
    parser.add_argument(
        "--radius", type=positive_float, default=4.0, help="distance to the box centre"
    )
    parser.add_argument(
        "--fov", type=field_of_view, default=48.0, help="horizontal field of view, degrees"
    )
