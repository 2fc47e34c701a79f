"""The multi-view prior: the contract between training and every use of the model.

``export`` writes the inference export (``<output_dir>/model/``) with its ``base_record`` (which
base pipeline, found again from anywhere) and ``camera_record`` (the training cameras, for score
distillation); ``load`` reads it back (``MultiViewPrior``); ``self_contained`` copies an export
and its base into one folder; ``call`` is the one call path into the prior (text and VAE
encoders, per-view conditions, the guided prediction) that sampling, SDS, inversion and TrAME
share. Nothing here imports ``training``: what training writes, inference reads through here.
"""
