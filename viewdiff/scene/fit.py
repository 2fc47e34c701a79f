"""Fit a 3D Gaussian scene to posed images: the optimisation of 3D Gaussian Splatting.

Kerbl et al. 2023, Sec. 5 and 7: Adam with per-parameter learning rates (the means' decaying
exponentially), the L1 + D-SSIM loss (Eq. 7), one random view per step, SH bands switched on one
by one, and adaptive density control: Gaussians whose view-space positional gradient is large
are cloned (small ones) or split in two (large ones), transparent and oversized ones pruned, and
opacities reset now and then. ``GaussianFitter`` (``viewdiff.scene.fitter``) holds that state and
takes one step at a time, so that other loops (TrAME's 3D update, the 3D-consistency metric) can
drive it; ``fit`` is the plain loop around it. The density control itself is
``viewdiff.scene.densification``.

Images are (V, 3, H, W) in [0, 1] (convert [-1, 1] batches with (x + 1) / 2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from viewdiff.scene.checkpoint import read_checkpoint, write_checkpoint
from viewdiff.scene.fitter import GaussianFitter
from viewdiff.scene.gaussians import GaussianScene
from viewdiff.scene.render import Backend


@dataclass(frozen=True)
class FitConfig:
    """How to fit: 3DGS's recipe, its schedule shortened for small object scenes."""

    iterations: int = 3000
    """Optimisation steps, one view each (3DGS: 30000)."""
    sh_degree: int = 3
    """SH degree of the fitted colours; lower-degree scenes are zero-padded to it."""
    sh_increase_interval: int = 1000
    """Steps between switching on the next SH band (3DGS: 1000)."""
    lambda_dssim: float = 0.2
    """Weight of the D-SSIM term in the loss (3DGS Eq. 7)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour behind the scene; masked-out pixels of the targets are set to it."""
    position_lr_init: float = 1.6e-4
    """Learning rate of the means at step 0, times the scene extent (3DGS)."""
    position_lr_final: float = 1.6e-6
    """... at the last step; in between it decays exponentially (3DGS)."""
    feature_lr: float = 2.5e-3
    """Learning rate of the SH DC colour; the higher bands get 1/20 of it (3DGS)."""
    opacity_lr: float = 2.5e-2
    """Learning rate of the opacity logits (3DGS)."""
    scaling_lr: float = 5e-3
    """Learning rate of the log-scales (3DGS)."""
    rotation_lr: float = 1e-3
    """Learning rate of the quaternions (3DGS)."""
    percent_dense: float = 0.01
    """Gaussians larger than this fraction of the scene extent are split, smaller cloned."""
    densify_from: int = 100
    """First step of density control (3DGS: 500 of 30000)."""
    densify_until: int = 1500
    """Last step of density control (3DGS: 15000 of 30000, i.e. half the run)."""
    densify_interval: int = 100
    """Steps between density-control passes (3DGS: 100)."""
    densify_grad_threshold: float = 2e-4
    """Mean view-space gradient norm (NDC units, as 3DGS) above which a Gaussian is densified."""
    opacity_reset_interval: int = 1000
    """Steps between opacity resets to 0.01, while densifying (3DGS: 3000 of its 15000)."""
    min_opacity: float = 0.005
    """Gaussians more transparent than this are pruned (3DGS)."""
    max_screen_fraction: float = 0.1
    """After the first opacity reset, prune Gaussians whose 3-sigma screen radius exceeds this
    fraction of the image's longer side (3DGS: 20 px of ~1000; at 64-256 px the 0.3 px^2
    dilation alone gives 1.6 px, so the threshold is relative here)."""
    max_gaussians: int | None = None
    """Cap on the number of Gaussians (None: no cap); densification picks the largest gradients."""
    backend: Backend = "auto"
    """Render backend: auto (gsplat on CUDA when installed, else torch), torch or gsplat."""
    seed: int = 0
    """Seed of the view order and of the split samples."""


@dataclass
class PosedViews:
    """Images with their cameras: images (V, 3, H, W) in [0, 1], K (V, 3, 3), w2c (V, 4, 4)."""

    images: Tensor
    K: Tensor
    w2c: Tensor
    masks: Tensor | None = None  # (V, 1, H, W) in [0, 1]: 1 on the object

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (V, 3, H, W), got {tuple(self.images.shape)}")
        views, _, height, width = self.images.shape
        if self.K.shape != (views, 3, 3) or self.w2c.shape != (views, 4, 4):
            got = f"{tuple(self.K.shape)} and {tuple(self.w2c.shape)}"
            raise ValueError(
                f"{views} images need K ({views}, 3, 3), w2c ({views}, 4, 4); got {got}"
            )
        if self.masks is not None and self.masks.shape != (views, 1, height, width):
            shape = tuple(self.masks.shape)
            raise ValueError(f"masks must be ({views}, 1, {height}, {width}), got {shape}")
        low, high = self.images.amin(dim=(1, 2, 3)), self.images.amax(dim=(1, 2, 3))
        bad = torch.nonzero((low < -1e-3) | (high > 1 + 1e-3)).flatten().tolist()
        if bad:
            raise ValueError(
                f"images of views {bad} are outside [0, 1] (min {low.min():.3f}, max "
                f"{high.max():.3f}); convert [-1, 1] images with (x + 1) / 2"
            )

    @property
    def num_views(self) -> int:
        """V."""
        return self.images.shape[0]

    def targets(self, background: Tensor) -> Tensor:
        """The images with masked-out pixels set to the background colour (V, 3, H, W)."""
        if self.masks is None:
            return self.images
        return self.images * self.masks + background[:, None, None] * (1.0 - self.masks)

    def to(self, like: Tensor) -> PosedViews:
        """The views on ``like``'s device and dtype."""
        masks = None if self.masks is None else self.masks.to(like)
        return PosedViews(self.images.to(like), self.K.to(like), self.w2c.to(like), masks)


@dataclass
class FitResult:
    """The fitted scene and how well it reproduces the views."""

    scene: GaussianScene
    train_psnr: list[float]  # per training view, dB
    test_psnr: list[float] | None  # per held-out view, dB (None without test views)
    losses: list[float]  # loss of every step
    seconds: float


FIT_STATE_FORMAT = "viewdiff.fit_state/1"


@dataclass(frozen=True)
class FitCheckpoints:
    """Where and how often ``fit`` writes a resumable checkpoint, and what it must match."""

    folder: Path
    every: int  # steps between checkpoints (0: none)
    run: dict  # what the run was started with (views, seed, ...): a resume must match it


def save_fit_checkpoint(
    checkpoints: FitCheckpoints, fitter: GaussianFitter, losses: list[float]
) -> Path:
    """Write the fitter's scene, optimiser, statistics and RNG (``viewdiff.scene.checkpoint``)."""
    tensors, document = fitter.checkpoint_state()
    state = {**document, "extent": fitter.extent, "losses": losses, "run": checkpoints.run}
    return write_checkpoint(checkpoints.folder, FIT_STATE_FORMAT, fitter.scene, tensors, state)


def resume_fitter(
    folder: Path, views: PosedViews, config: FitConfig, run: dict, device: torch.device
) -> tuple[GaussianFitter, list[float]]:
    """The fitter and the losses so far of a ``save_fit_checkpoint`` folder of this run."""
    checkpoint = read_checkpoint(folder, FIT_STATE_FORMAT, "a fit checkpoint", device)
    state = checkpoint.state
    if state["run"] != run:
        differs = sorted(key for key in run.keys() | state["run"].keys()
                         if run.get(key) != state["run"].get(key))  # fmt: skip
        raise ValueError(
            f"{state.path}: a checkpoint of another fit (its {', '.join(differs)} differ from "
            "this run's): resume with the same views, seed, Gaussians and recipe"
        )
    scene = checkpoint.scene.with_sh_degree(config.sh_degree)
    fitter = GaussianFitter(scene, views, config, extent=float(state["extent"]))
    fitter.restore_checkpoint_state(checkpoint.tensors, state)
    return fitter, [float(loss) for loss in state["losses"]]


def fit(
    scene: GaussianScene,
    views: PosedViews,
    config: FitConfig | None = None,
    test_views: PosedViews | None = None,
    callback: Callable[[GaussianFitter, float], None] | None = None,
    progress: bool = True,
    checkpoints: FitCheckpoints | None = None,
    resume: Path | None = None,
) -> FitResult:
    """Optimise ``scene`` (not modified) to reproduce ``views``; PSNR on them and on test views.

    ``callback(fitter, loss)`` runs after every step (e.g. to log, or to change the targets);
    ``checkpoints`` writes a resumable checkpoint every so many steps, ``resume`` continues from
    one (the same steps follow, bit for bit, as if the run had not stopped).
    """
    config = config or FitConfig()
    if config.iterations < 1:
        raise ValueError(f"FitConfig.iterations must be >= 1, got {config.iterations}")
    start = time.perf_counter()
    losses: list[float] = []
    if resume is not None:
        run = {} if checkpoints is None else checkpoints.run
        fitter, losses = resume_fitter(resume, views, config, run, scene.means.device)
    else:
        fitter = GaussianFitter(scene, views, config)
    bar = tqdm(
        range(fitter.iteration, config.iterations),
        desc="fit 3D Gaussians",
        disable=not progress,
        initial=fitter.iteration,
        total=config.iterations,
    )
    for _ in bar:
        losses.append(fitter.step())
        if callback is not None:
            callback(fitter, losses[-1])
        if fitter.iteration % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", gaussians=fitter.params["means"].shape[0])
        every = 0 if checkpoints is None else checkpoints.every
        if checkpoints is not None and every > 0 and fitter.iteration % every == 0:
            save_fit_checkpoint(checkpoints, fitter, losses)
    return FitResult(
        scene=fitter.scene.detach(),
        train_psnr=fitter.evaluate(views),
        test_psnr=None if test_views is None else fitter.evaluate(test_views),
        losses=losses,
        seconds=time.perf_counter() - start,
    )
