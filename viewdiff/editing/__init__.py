"""Editing real views with the prior: edit-friendly DDPM inversion (``inversion``), the folder
that holds one (``inversion_folder``) and the models it runs (``editing_model``: the multi-view
prior on N posed views, or any Stable Diffusion folder on single images). Its commands are
``infer.py invert`` / ``edit`` (``viewdiff.commands.invert``, ``viewdiff.commands.edit``);
TrAME, editing 3D scenes, is ``viewdiff.trame``."""
