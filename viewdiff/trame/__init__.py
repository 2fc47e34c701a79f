"""TrAME (trajectory-anchored multi-view editing of 3D Gaussian splats) with the multi-view prior.

``editor`` runs the edit (``TrameEditor``: the Trajectory-Anchored Scheme, TAS, one trajectory
step at a time, resumable through ``viewdiff.scene.checkpoint``); ``config`` its settings (the
``trame:`` section); ``plan`` the keyframe / context plan and the schedules; ``dual_prior`` the
prior's one guided call on both branches (source, target) of a batch of views; ``samplers`` the
target branch's step, DDCM (``DdcmBranch``, the math in ``ddcm``) or edit-friendly DDPM
(``DdpmBranch``); ``attention_control`` view-consistent attention control (VCAC) as attention
processors; ``region`` the edit region (masks from Gaussians, Gaussians traced from the prior's
attention); ``metrics`` and ``clip_similarity`` what an edit is measured by.
"""
