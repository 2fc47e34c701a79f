"""Fine-tune a Stable Diffusion UNet into a multi-view model (ViewDiff, CVPR 2024):
``python train.py`` / ``accelerate launch train.py`` / ``torchrun ... train.py``, the same as
the installed ``viewdiff-train``. What a launcher can rely on (ranks, resume, signals, exit
status, outputs) is documented in ``viewdiff/commands/train.py``."""

# Before torch: from here on a stop signal during imports or preflight exits 3 (importing installs).
import viewdiff.training.early_signals  # noqa: F401

# isort: split
from viewdiff.commands.train import console_main, main  # noqa: F401

if __name__ == "__main__":
    console_main()
