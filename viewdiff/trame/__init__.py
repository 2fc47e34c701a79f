"""TrAME (trajectory-anchored multi-view editing of 3D Gaussian splats) with the multi-view prior.

``editor`` runs the edit (``TrameEditor``: trajectory-anchored scheme, TAS); ``config`` its
settings (the ``trame:`` section); ``plan`` the keyframe / context plan; ``ddcm`` the DDCM step;
``attention_control`` view-consistent attention control (VCAC) as attention processors;
``region`` the edit region; ``metrics`` and ``clip_similarity`` what an edit is measured by.
"""
