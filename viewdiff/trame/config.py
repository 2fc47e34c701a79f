"""TrAME's knobs (``viewdiff.trame.editor.TrameEditor`` runs them): the trajectory, the schedules
of the Trajectory-Anchored Scheme, the attention controls' thresholds, the 3D updates."""

from __future__ import annotations

from dataclasses import dataclass, field

from viewdiff.scene.fit import FitConfig
from viewdiff.trame.plan import Schedule, check_schedule
from viewdiff.trame.plan import schedule_value as value_at


@dataclass(frozen=True)
class TrameConfig:
    """TrAME's knobs; schedules are ``(from_step, value)`` pairs over the grid's step index."""

    steps: int = 20
    """DDIM grid of the trajectory (TrAME: 20)."""
    start: int = 10
    """First grid index run: the trajectory starts at timestep grid[start] (TrAME: 10 of 20)."""
    guidance: float = 7.5
    """Classifier-free guidance of both branches."""
    kappa: Schedule = ((0, 0.95), (10, 0.3))
    """kappa_k of the source consistency correction (official configs: 0.95, 0.3 from 10)."""
    f: Schedule = ((0, 1.0), (11, 0.0))
    """f_k of the error compensation: 1 keeps the 2D estimate, 0 takes the render (official)."""
    updates: Schedule = ((0, 0), (9, 10))
    """3D updates per edit view after step k (official: none until 9, then 5-20)."""
    keyframe_every: int = 4
    """A keyframe every this many views of the orbit; the views between form its context."""
    max_angle_deg: float = 25.0
    """Context views further than this from their keyframe are edited with the keyframes."""
    inject_self_until: float = 0.5
    """Fraction of the trajectory during which the target takes the source's self-attention
    queries and keys (structure)."""
    replace_cross_until: float = 0.8
    """... during which the target's cross-attention maps of shared tokens are the source's."""
    propagate_until: float = 1.0
    """... during which a context's views take their keyframe's self-attention keys and values
    (KV propagation)."""
    blend_from: float = 0.0
    """Fraction of the trajectory after which the edit is blended with the source outside the
    edit mask (local blending); 1 switches it off."""
    mask_grow: int = 1
    """Latent pixels the edit mask grows by before blending."""
    lambda_dssim: float = 0.2
    """D-SSIM weight of the 3D update loss (3DGS)."""
    anchor_weight: Schedule = ((0, 1.0), (15, 5.0), (18, 20.0))
    """GaussianEditor's anchor loss weight, growing over the trajectory."""
    sampler: str = "ddcm"
    """Virtual inversion of the dual branches: ddcm (InfEdit / TrAME: fresh shared noise every
    step, kappa's correction) or ddpm (the edit-friendly noise of ``viewdiff.editing.inversion``:
    the source branch is the renders' inversion, the target reuses its noise maps; kappa unused)."""
    source_guidance: float | None = None
    """Guidance of the ddpm sampler's inversion (None: ``guidance``; the inversion paper
    inverts at 3.5 and edits at 15)."""
    held_out: tuple[int, ...] = ()
    """Edit views that are edited in 2D but never used by the 3D updates: the scene's renders
    there, against their pseudo ground truth, measure how well the edit generalises."""
    tas: bool = True
    """False: edit in 2D first, then reconstruct (the ablation)."""
    vcac: bool = True
    """False: no attention control and no local blending (the ablation)."""
    background: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Colour behind the scene in every render."""
    fit: FitConfig = field(default_factory=lambda: FitConfig(sh_degree=0, densify_until=0))
    """Learning rates of the 3D updates (no density control: the anchor loss needs the
    Gaussians it started with)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 2 or not 0 <= self.start < self.steps:
            raise ValueError(
                f"trame: need steps >= 2 and 0 <= start < steps, got {self.steps}, {self.start}"
            )
        if self.sampler not in ("ddcm", "ddpm"):
            raise ValueError(f"trame.sampler must be ddcm or ddpm, got {self.sampler!r}")
        if not self.guidance >= 1.0:
            raise ValueError(f"trame.guidance must be >= 1, got {self.guidance}")
        for name in ("kappa", "f", "updates", "anchor_weight"):
            check_schedule(getattr(self, name), f"trame.{name}")
        if len(set(self.held_out)) != len(self.held_out):
            raise ValueError(f"trame.held_out repeats views: {list(self.held_out)}")
        if any(v < 0 for _, v in self.updates):
            raise ValueError(f"trame.updates must be >= 0, got {list(self.updates)}")
        for name in ("inject_self_until", "replace_cross_until", "propagate_until", "blend_from"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"trame.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def trajectory_steps(self) -> list[int]:
        """The grid indices run: start .. steps - 1."""
        return list(range(self.start, self.steps))

    def fraction(self, k: int) -> float:
        """How far step k is into the trajectory, in [0, 1)."""
        return (k - self.start) / (self.steps - self.start)

    def blending(self, k: int) -> bool:
        """Whether step k blends the edit with the source outside the edit mask."""
        return self.vcac and self.fraction(k) >= self.blend_from

    def total_updates(self, views: int) -> int:
        """3D updates of the whole trajectory for ``views`` trained views (the budget the
        no-TAS ablation gets too)."""
        return sum(int(value_at(self.updates, k)) * views for k in self.trajectory_steps)
