"""Fine-tune a Stable Diffusion UNet into a multi-view model (ViewDiff, CVPR 2024).

python train.py --config configs/tiny_cpu.yaml [key.sub=value ...]
accelerate launch train.py --config configs/co3d_sd21.yaml
python train.py --config configs/co3d_sd21.yaml --print-config   # resolved config, no run
"""

from __future__ import annotations

import argparse
import sys

from viewdiff.config import add_config_arguments, config_from_args, config_to_yaml


def main(argv: list[str] | None = None) -> int:
    """Resolve the config; train (the loop arrives with the training issue)."""
    # Set up: the resolved config (defaults <- preset <- overrides).
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    # The training loop is not written yet: say so instead of pretending to train.
    parser.exit(2, "train.py: the training loop is not implemented yet; use --print-config\n")


if __name__ == "__main__":
    sys.exit(main())
