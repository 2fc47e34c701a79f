"""Score Distillation Sampling (DreamFusion, Poole et al. 2023) with the multi-view prior.

A 3D Gaussian scene is optimised so that its renders look like the prior's samples: groups of N
posed views are rendered, encoded, noised with one t per group and scored *jointly* by the
multi-view UNet, whose cross-frame attention and projection layers push all views towards one
object. The pieces, each in its own module:

- ``gradient``: the SDS gradient and loss, its weightings, the x0-reconstruction mode (pure);
- ``schedules``: which t at which step (random, annealed ranges, DreamTime) (pure);
- ``cameras``: groups of cameras drawn as the prior's training cameras were;
- ``loop``: ``ScoreDistillation``, the resumable state of one run, driving ``GaussianFitter``;
- ``guidance_eval``: threestudio's debugging picture (noisy latents, one-step x0, full denoise).

Its command line is ``infer.py sds`` (``viewdiff.commands.sds``); checkpoints are
``viewdiff.scene.checkpoint``'s.

Configuration: ``viewdiff.sds.config.SdsConfig`` (the ``sds:`` section of the config tree; its
``fit`` is the scene fitter's ``FitConfig``).
"""
