"""Inference with a trained multi-view prior: load an export, place cameras, generate, evaluate.

``load`` reads the export (``<output_dir>/model/``) with its base pipeline; ``trajectory`` turns
orbits or cameras.json files into cameras; ``autoregressive`` plans and runs the sliding window
that covers 100+ views; ``outputs`` writes PNGs, grids, turntables and cameras.json;
``evaluate`` measures novel-view synthesis (PSNR, SSIM, with and without masks) on held-out
shards; ``self_contained`` writes an export with its base pipeline inside one folder, which
``pipeline.MultiViewPipeline`` (a diffusers pipeline) loads. The denoising loops themselves live
in ``viewdiff.sampling``.
"""
