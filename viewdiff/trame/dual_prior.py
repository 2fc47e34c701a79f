"""The prior as TrAME calls it: both branches of a batch of edit views in one guided call.

A batch of n edit views is B = 2 objects of n views for the prior's one call path
(``viewdiff.prior.call``): the source branch with the source prompt, the target branch with the
target prompt, each view with its camera, CFG ``uncond + w (cond - uncond)`` with the text dropped
and the cameras kept. View-consistent attention control (VCAC, TrAME Sec. 4.3) rides along as the
call's processors (``viewdiff.trame.attention_control``): early in the trajectory the target takes
the source's self-attention queries and keys and its cross-attention maps of shared words, and a
context batch takes its keyframe's self-attention keys and values.

The DDIM grid of the trajectory lives here too: step k of every sampler is timestep ``grid[k]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from viewdiff.cameras.pose_features import pose_features
from viewdiff.editing.editing_model import EditingModel
from viewdiff.inference.trajectory import Trajectory
from viewdiff.prior.call import ViewConditions, encode_prompts, prior_predictions
from viewdiff.trame.attention_control import AttentionControl, AttentionRecord, token_alignment
from viewdiff.trame.config import TrameConfig
from viewdiff.trame.ddcm import alpha_bar_at
from viewdiff.trame.plan import ViewPlan


class DualBranchPrior:
    """The prior, the prompts, the cameras and the DDIM grid of one edit; ``predictions`` is the
    guided call on both branches of a batch of views."""

    def __init__(
        self,
        editing: EditingModel,
        cameras: Trajectory,
        plan: ViewPlan,
        config: TrameConfig,
        source_prompt: str,
        prompt: str,
    ) -> None:
        self.editing, self.cameras, self.plan, self.config = editing, cameras, plan, config
        self.source_prompt, self.prompt = source_prompt, prompt
        texts = encode_prompts(editing.text_encoder, editing.tokenizer, [source_prompt, prompt])
        empty = encode_prompts(editing.text_encoder, editing.tokenizer, [""])
        self.texts, self.empty = texts, empty  # (2, 77, D): source, target; (1, 77, D)
        self.alignment = token_alignment(editing.tokenizer, source_prompt, prompt)
        self.scheduler = editing.scheduler()
        self.scheduler.set_timesteps(config.steps)
        self.grid = self.scheduler.timesteps.clone()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.clone()

    def alpha_bar(self, k: int) -> Tensor:
        """abar of grid step k (0-d float64)."""
        return alpha_bar_at(self.alphas_cumprod, self.grid[k])

    def control(
        self, k: int, views: list[int], record: AttentionRecord | None = None
    ) -> AttentionControl | None:
        """The attention control of step k for a batch of ``views`` (None when VCAC is off and
        nothing is recorded); a context batch propagates its keyframe's keys and values."""
        n_views, config = len(views), self.config
        if not config.vcac:
            return None if record is None else AttentionControl(n_views, record=record)
        fraction = config.fraction(k)
        shared, index = self.alignment
        return AttentionControl(
            n_views,
            inject_self=fraction < config.inject_self_until,
            replace_cross=fraction < config.replace_cross_until,
            propagate_first=views != self.plan.keyframes and fraction < config.propagate_until,
            shared_tokens=shared,
            source_index=index,
            record=record,
        )

    def conditions(self, views: list[int], texts: Tensor) -> ViewConditions:
        """The prior's conditions of ``views`` for each prompt embedding of ``texts`` (B, 77, D)."""
        device, cams = self.editing.device, self.cameras.subset(views)
        K, w2c = cams.K[None].to(device), cams.w2c[None].to(device)
        pose = pose_features(K, w2c, cams.image_size_hw)
        K, w2c, pose = (x.expand(texts.shape[0], *x.shape[1:]) for x in (K, w2c, pose))
        empty = self.empty.expand(texts.shape[0], -1, -1)
        return ViewConditions(texts, empty, K, w2c, pose, cams.image_size_hw)

    def predictions(
        self,
        views: list[int],
        x_s: Tensor,
        x_t: Tensor,
        k: int,
        record: AttentionRecord | None = None,
        guidance: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The guided predictions (eps_s, eps_t) (n, C, h, w) of both branches of ``views`` at
        step k in one call (guidance: the config's unless given)."""
        device, rows = self.editing.device, 2 * len(views)
        with torch.no_grad():
            eps, _ = prior_predictions(
                self.editing.model,
                torch.cat([x_s, x_t]),
                torch.full((rows,), int(self.grid[k]), device=device),
                self.conditions(views, self.texts),
                self.config.guidance if guidance is None else guidance,
                control=self.control(k, views, record),
            )
        eps_s, eps_t = eps.to(x_s).chunk(2)
        return eps_s, eps_t
