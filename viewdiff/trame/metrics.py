"""What a 3D edit is measured by (TrAME Sec. 5; IN2N / GaussianEditor).

- 3D consistency: the PSNR / SSIM of the edited scene's renders against the 2D pseudo ground
  truth it was edited toward, at the edit views: views that disagree cannot all be matched by one
  scene, so inconsistent 2D edits score low; and the same PSNR at held-out views (edited in 2D,
  never used by the 3D updates);
- preservation: the PSNR, outside the original object (its rendered opacity < 0.5), of the edited
  scene's renders against the original scene's, on an orbit of views;
- CLIP directional similarity of the orbit renders, with a user-supplied CLIP
  (``viewdiff.trame.clip_similarity``), when one is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from viewdiff.inference.evaluate import view_psnr, view_ssim
from viewdiff.inference.trajectory import Trajectory
from viewdiff.scene.render import render

if TYPE_CHECKING:
    from viewdiff.trame.clip_similarity import ClipDirection
    from viewdiff.trame.editor import TrameEditor


def render_orbit(scene, orbit: Trajectory, background: Tensor) -> tuple[Tensor, Tensor]:
    """Renders (V, 3, H, W) in [0, 1] and opacities (V, H, W) of ``scene`` at ``orbit``."""
    height, width = orbit.image_size_hw
    rgb, alpha = [], []
    with torch.no_grad():
        for v in range(len(orbit)):
            out = render(scene, orbit.K[v], orbit.w2c[v], height, width, background)
            rgb.append(out.rgb.clamp(0, 1))
            alpha.append(out.alpha[0])
    return torch.stack(rgb), torch.stack(alpha)


def edit_metrics(
    editor: TrameEditor, orbit: Trajectory, clip: ClipDirection | None = None
) -> dict[str, Any]:
    """Consistency and preservation (and CLIP direction) of a finished edit, plus the orbit
    renders (V, 3, H, W)."""
    edited = editor.scene()
    at_views = editor.render_all(edited)
    pseudo = editor.pseudo_ground_truth()
    trained, held_out = editor.trained_views, list(editor.config.held_out)
    before, alpha = render_orbit(editor.original, orbit, editor.background)
    after, _ = render_orbit(edited, orbit, editor.background)
    outside = (alpha < 0.5)[:, None].to(after)  # (V, 1, H, W)
    metrics = {
        "consistency_psnr": float(view_psnr(at_views[trained], pseudo[trained]).mean()),
        "consistency_ssim": float(view_ssim(at_views[trained], pseudo[trained]).mean()),
        "outside_psnr": float(view_psnr(after, before, outside).nanmean()),
        "orbit_renders": after,
    }
    if held_out:
        metrics["held_out_psnr"] = float(view_psnr(at_views[held_out], pseudo[held_out]).mean())
    if clip is not None:
        direction = clip.directional_similarity(before, after, editor.source_prompt, editor.prompt)
        metrics["clip_directional_similarity"] = direction
    return metrics
