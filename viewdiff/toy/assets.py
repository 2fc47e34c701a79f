"""Where the shipped toy world is: ``viewdiff/assets/toy/`` inside the installed package."""

from __future__ import annotations

from pathlib import Path

import viewdiff

TOY_ASSETS = Path(viewdiff.__file__).resolve().parent / "assets" / "toy"
TOY_SD = TOY_ASSETS / "sd"  # the pretrained toy Stable Diffusion (a diffusers folder)
TOY_MULTIVIEW = TOY_ASSETS / "multiview"  # its multi-view prior (an inference export)
