"""Offline, seeded Stable Diffusion 2.1-shaped pipelines for tests and CPU benchmarks
(``pipelines``); ``python -m viewdiff.tiny OUT_DIR`` writes one (``viewdiff.commands.tiny``)."""

from viewdiff.tiny.pipelines import (
    SIZES,
    build_text_encoder,
    build_tiny_pipeline,
    build_unet,
    build_vae,
    bytes_to_unicode,
    count_params,
    learn_merges,
    random_components,
    save_pipeline,
    sd21_base_scheduler_config,
    sd21_base_unet_config,
    sd21_base_vae_config,
    text_encoder_config,
    unet_config,
    vae_config,
    write_tokenizer,
)

__all__ = [
    "SIZES",
    "build_text_encoder",
    "build_tiny_pipeline",
    "build_unet",
    "build_vae",
    "bytes_to_unicode",
    "count_params",
    "learn_merges",
    "random_components",
    "save_pipeline",
    "sd21_base_scheduler_config",
    "sd21_base_unet_config",
    "sd21_base_vae_config",
    "text_encoder_config",
    "unet_config",
    "vae_config",
    "write_tokenizer",
]
