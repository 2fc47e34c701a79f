"""Shared fixtures. Tests never reach a model hub: everything is built locally and offline."""

import os

# Set before diffusers / transformers are imported anywhere, so that no test can download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, seed-0 Stable Diffusion pipeline folder, built once per test session."""
    from viewdiff.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"), size="tiny", seed=0)
