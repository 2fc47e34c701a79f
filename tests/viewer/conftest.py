"""The browser the viewer tests drive: Debian's Chromium, installed here if it is missing."""

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from viewdiff.viewer.browser import BrowserUnavailable, find_chromium

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def install_chromium() -> None:
    """apt-get install chromium (one process at a time: xdist workers share the machine)."""
    lock = Path(tempfile.gettempdir()) / "viewdiff-chromium-install.lock"
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if shutil.which("chromium"):
            return
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
        for command in (["apt-get", "update", "-qq"], install):
            subprocess.run(command, check=True, env=APT_ENV, capture_output=True, timeout=900)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable; installed with apt when missing (CI: a failure fails)."""
    try:
        return find_chromium()
    except BrowserUnavailable:
        pass
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("no Chromium and no root apt-get to install it")
        pytest.skip("no Chromium, and installing it needs root apt-get")
    try:
        install_chromium()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        stderr = getattr(error, "stderr", b"") or b""
        message = (
            f"apt-get install chromium failed: {error}; {stderr.decode(errors='replace')[-500:]}"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return find_chromium()
