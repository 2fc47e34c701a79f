"""An installed viewdiff works outside the repository: the console scripts, the packaged presets
and the shipped toy world, from the package's files alone (installed with pip into a folder of
its own, run from another one)."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A command's result, its output as text."""
    return subprocess.run(command, cwd=cwd, env={**ENV, **env}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def setuptools_major() -> int:
    """The major version of this venv's setuptools (0 without one)."""
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """viewdiff pip-installed (no dependencies: they are this venv's) into a folder of its own."""
    target = tmp_path_factory.mktemp("site-packages")
    build = ["--no-build-isolation"] if setuptools_major() >= 77 else []  # else pip fetches it
    result = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *build, "--target",
                  str(target), str(REPO)], cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return target


def test_console_scripts_are_declared_and_installed_here():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["viewdiff-train"] == "viewdiff.commands.train:console_main"
    assert scripts["viewdiff-infer"] == "viewdiff.commands.infer:console_main"
    for name in ("viewdiff-train", "viewdiff-infer"):
        assert (Path(sys.executable).parent / name).is_file(), "run `pip install -e .` again"


def test_the_installed_package_trains_and_infers_from_another_folder(installed, tmp_path):
    assert (installed / "viewdiff/configs/co3d_sd21.yaml").is_file()
    assert (installed / "viewdiff/assets/toy/multiview/multiview.json").is_file()
    assert not (installed / "train.py").exists()  # nothing top-level but the package
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = [sys.executable, "-c"]
    printed = run([*python, "from viewdiff.commands.train import main; "
                   "main(['--config', 'co3d_sd21.yaml', '--print-config'])"],
                  elsewhere, PYTHONPATH=str(installed))  # fmt: skip
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert "pretrained_model: stabilityai/stable-diffusion-2-1-base" in printed.stdout
    sampled = run([*python, "import sys; from viewdiff.commands.infer import console_main; "
                   "import viewdiff; assert viewdiff.__file__.startswith(sys.argv[1]); "
                   "sys.argv[1:] = ['sample', '--checkpoint', sys.argv[2], '--prompt', 'a ball',"
                   " '--views', '2', '--steps', '2', '--out', 'views']; console_main()",
                   str(installed), str(installed / "viewdiff/assets/toy/multiview")],
                  elsewhere, PYTHONPATH=str(installed))  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert len(list((elsewhere / "views/views").glob("*.png"))) == 2
