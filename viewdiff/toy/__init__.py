"""The toy world: a small Stable Diffusion pretrained from scratch on CPU, and its multi-view prior.

Single-hue balls, boxes and cans (``viewdiff.data.toy_objects``), filmed in the CO3Dv2 layout and
packed into shards like CO3D, teach a VAE, a UNet and a tiny CLIP text encoder of SD 2.1's
layout what "a red ball" looks like (``pretrain``); ``train.py --config configs/toy_cpu.yaml``
then makes that base a ViewDiff multi-view prior. Both ship under ``viewdiff/assets/toy/``
(``ship``), rebuilt from nothing by ``make toy``. ``classify`` reads an image's colour and shape,
so that what the prior and its uses produce can be checked for what they claim.
"""
