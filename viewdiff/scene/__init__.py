"""3D Gaussian scenes: parameters and PLY, a differentiable renderer, fitting, turntables."""

from viewdiff.scene.fit import FitConfig, FitResult, PosedViews, fit
from viewdiff.scene.fitter import GaussianFitter
from viewdiff.scene.gaussians import GaussianScene, read_gaussian_ply, write_gaussian_ply
from viewdiff.scene.render import RenderOutput, render
from viewdiff.scene.turntable import render_turntable, save_turntable

__all__ = [
    "FitConfig",
    "FitResult",
    "GaussianFitter",
    "GaussianScene",
    "PosedViews",
    "RenderOutput",
    "fit",
    "read_gaussian_ply",
    "render",
    "render_turntable",
    "save_turntable",
    "write_gaussian_ply",
]
