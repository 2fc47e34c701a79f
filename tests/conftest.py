"""Shared fixtures. Tests never reach a model hub: everything is built locally and offline."""

import os

# Set before diffusers / transformers are imported anywhere, so that no test can download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, seed-0 Stable Diffusion pipeline folder, built once per test session."""
    from viewdiff.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"), size="tiny", seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: tiny models gain nothing from more, and on a shared 2-core
    machine threads that wait for each other at every small op made steps 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
