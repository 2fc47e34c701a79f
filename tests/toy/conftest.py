"""Shared fixtures of the toy-world tests: small sets of real toy renders, packed as shards."""

from pathlib import Path

import pytest

from viewdiff.toy.images import ToyImages, read_shard_images
from viewdiff.toy.quality import make_toy_shards


@pytest.fixture(scope="session")
def toy_fit_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 toy objects per shape, 5 views each (seed 2): what classifiers are fitted on."""
    return make_toy_shards(tmp_path_factory.mktemp("toy-fit"), 8, 5, seed=2)


@pytest.fixture(scope="session")
def toy_heldout_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 other toy objects per shape, 5 views each (seed 1): held out."""
    return make_toy_shards(tmp_path_factory.mktemp("toy-heldout"), 4, 5, seed=1)


@pytest.fixture(scope="session")
def toy_fit(toy_fit_shards: Path) -> ToyImages:
    return read_shard_images(toy_fit_shards, show_progress=False)


@pytest.fixture(scope="session")
def toy_heldout(toy_heldout_shards: Path) -> ToyImages:
    return read_shard_images(toy_heldout_shards, show_progress=False)
