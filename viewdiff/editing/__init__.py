"""Editing real views with the prior: edit-friendly DDPM inversion (``inversion``), its commands
(``cli``: infer.py invert / edit) and the denoisers it runs (``denoisers``: the multi-view prior
on N posed views, or any Stable Diffusion folder on single images)."""
