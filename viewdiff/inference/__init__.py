"""Generating with a trained multi-view prior (loaded through ``viewdiff.prior``).

``trajectory`` turns orbits or cameras.json files into cameras; ``inputs`` reads given views;
``autoregressive`` and ``windows`` plan and run the sliding window that covers 100+ views;
``outputs`` writes PNGs, grids, turntables and cameras.json, ``read_generation`` reads them
back; ``evaluate`` and ``heldout`` measure novel-view synthesis (PSNR, SSIM, with and without
masks) on held-out shards; ``pipeline.MultiViewPipeline`` is the prior as a diffusers pipeline;
``hub`` stages an export for the Hugging Face Hub. The denoising loops themselves live in
``viewdiff.sampling``.
"""
