"""Shared fixtures of the training tests: tiny synthetic shards, run arguments, one thread."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
# One process, one thread: tiny models gain nothing from threads on a shared 2-core machine,
# and subprocess runs must compute exactly what in-process runs compute.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _shards(out: Path, categories: tuple[str, ...], seed: int) -> Path:
    """Synthetic CO3D objects (one sequence of 8 frames per category) packed into 64 px shards."""
    root = make_synthetic_dataset(out / "co3d", categories, 1, 8, (96, 72), seed=seed, points=500)
    options = ShardOptions(image_size=64, max_frames=8, min_frames=4, samples_per_shard=1)
    write_shards(root, out / "shards", options)
    return out / "shards"


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two objects (a box and a ball), one per shard."""
    return _shards(tmp_path_factory.mktemp("train-data"), ("box", "ball"), seed=1)


@pytest.fixture(scope="session")
def one_object_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single object (a box): the overfitting test."""
    return _shards(tmp_path_factory.mktemp("one-object"), ("box",), seed=3)


@pytest.fixture(scope="session")
def run_args(tiny_sd: Path, train_shards: Path):
    """train.py arguments of a tiny CPU run into ``out``: 1 object x 2 views per step."""

    def args(out: Path, *overrides: str, shards: Path = train_shards) -> list[str]:
        return [
            "--config",
            str(REPO / "configs" / "tiny_cpu.yaml"),
            f"model.pretrained_model={tiny_sd}",
            f"data.shards={shards}",
            f"train.output_dir={out}",
            "data.n_views=2",
            "data.shuffle_buffer=2",
            "train.batch_size=1",
            "train.log_every=1",
            "train.validate_every=0",
            *overrides,
        ]

    return args


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment of train.py subprocesses: one thread (as in-process runs), offline."""
    return dict(SUBPROCESS_ENV)


# Runs that are interrupted and resumed: 8 steps of 2 micro-batches, warm-up and cosine decay,
# EMA, checkpoints (and data segments) every 3 steps.
RESUME_OVERRIDES = (
    "train.max_steps=8",
    "train.checkpoint_every=3",
    "train.checkpoints_keep=10",
    "train.gradient_accumulation_steps=2",
    "train.lr_warmup_steps=4",
    "train.lr_scheduler=cosine",  # a rate that changes every step: resume must set the same
    "train.use_ema=true",
)


@pytest.fixture(scope="session")
def resume_args(run_args):
    """Arguments of the resume tests' runs into ``out``."""

    def args(out: Path, *overrides: str) -> list[str]:
        return run_args(out, *RESUME_OVERRIDES, *overrides)

    return args


@pytest.fixture(scope="session")
def uninterrupted(resume_args, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the resume tests' run, trained in one go."""
    import train

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(resume_args(out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def start_training(subprocess_env):
    """Start train.py (or torchrun with ``nproc`` ranks) in the background, output to ``log``."""

    def start(argv: list[str], log: Path, nproc: int = 0) -> subprocess.Popen:
        launcher = [sys.executable]
        if nproc:
            with socket.socket() as probe:  # a free port for the rendezvous
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            launcher += [
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={nproc}",
                f"--master_port={port}",
            ]
        with log.open("w") as stream:
            return subprocess.Popen(
                [*launcher, str(REPO / "train.py"), *argv],
                cwd=REPO,
                env=subprocess_env,
                stdout=stream,
                stderr=subprocess.STDOUT,
            )

    return start


def wait_for_folder(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists while ``process`` runs (fails if it ends or times out)."""
    deadline = time.monotonic() + timeout
    while not path.is_dir():
        assert process.poll() is None, f"the run ended (status {process.returncode}) before {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def wait_for():
    """``wait_for(path, process)``: wait for a folder to appear while a run is going."""
    return wait_for_folder


def same_training(run: Path, reference: Path) -> None:
    """Trained weights, EMA and export of two runs' step-8 checkpoints agree to 1e-6."""
    for name in ("trainable.safetensors", "ema.safetensors"):
        got = load_file(run / "checkpoints" / "checkpoint-8" / name)
        want = load_file(reference / "checkpoints" / "checkpoint-8" / name)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    got = load_file(run / "model" / "multiview.safetensors")
    want = load_file(reference / "model" / "multiview.safetensors")
    assert all(torch.allclose(got[key], want[key], rtol=0, atol=1e-6) for key in want)


@pytest.fixture(scope="session")
def assert_same_training():
    """``assert_same_training(run, reference)``: equal parameters after 8 steps (to 1e-6)."""
    return same_training
