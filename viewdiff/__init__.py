"""viewdiff: multi-view diffusion on a pretrained Stable Diffusion UNet (ViewDiff, CVPR 2024)."""

__version__ = "0.1.0"
