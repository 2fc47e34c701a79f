"""A headless Chromium on a viewer page: screenshots for ``infer.py view --screenshot`` and tests.

The system's Chromium (Debian's ``chromium``: ``apt install chromium``) driven by playwright,
which needs no browser download of its own. WebGL runs on SwiftShader, Chromium's software
renderer, so a machine without a GPU or a screen renders the page as a desktop would.

A viser page draws its scene into one WebGL canvas once its websocket has connected and the
scene has arrived; ``wait_for_scene`` waits for that canvas to show something other than the
background before a screenshot is taken.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import ElementHandle, Page

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Software WebGL in a headless browser (SwiftShader through ANGLE).
CHROMIUM_ARGS = (
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--no-sandbox",  # root in containers and CI
)


class BrowserUnavailable(RuntimeError):
    """No Chromium, or no playwright, to open the page with."""


def find_chromium() -> str:
    """The system Chromium's path, or BrowserUnavailable saying how to install it."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserUnavailable(
        "no Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + "); install Debian's: "
        "sudo apt install chromium"
    )


@contextmanager
def open_page(
    url: str, size: tuple[int, int] = (800, 600), timeout_s: float = 60.0
) -> Iterator[Page]:
    """A headless Chromium page of ``size`` (width, height) px at ``url``, its canvas attached."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserUnavailable("playwright is not installed: pip install playwright") from None
    executable = find_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(url, timeout=timeout_s * 1000)
            page.wait_for_selector("canvas", timeout=timeout_s * 1000)
            yield page
        finally:
            browser.close()


def canvas_image(page: Page) -> np.ndarray:
    """The page's largest canvas as it is drawn now, (H, W, 3) uint8."""

    def area(canvas: ElementHandle) -> float:
        box = canvas.bounding_box()
        return box["width"] * box["height"] if box else 0.0

    canvas = max(page.query_selector_all("canvas"), key=area)
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot(type="png"))).convert("RGB"))


def is_blank(image: np.ndarray, tolerance: int = 8) -> bool:
    """Whether an image is one colour (within ``tolerance`` per channel) everywhere."""
    flat = image.reshape(-1, image.shape[-1]).astype(np.int16)
    return bool((np.abs(flat - np.median(flat, axis=0)).max(axis=1) <= tolerance).all())


def wait_for_scene(page: Page, timeout_s: float = 60.0, settle_s: float = 1.0) -> np.ndarray:
    """Wait until the canvas shows more than one colour, then ``settle_s`` more; its image."""
    deadline = time.monotonic() + timeout_s
    while True:
        image = canvas_image(page)
        if not is_blank(image):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the viewer's canvas stayed blank for {timeout_s:.0f} s")
        page.wait_for_timeout(250)
    page.wait_for_timeout(settle_s * 1000)
    return canvas_image(page)


def screenshot(
    url: str, out: Path, size: tuple[int, int] = (800, 600), timeout_s: float = 60.0
) -> Path:
    """A PNG of the viewer page at ``url`` once its scene has been drawn; returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_page(url, size, timeout_s) as page:
        wait_for_scene(page, timeout_s)
        # Not in the picture: the notice that WebGL runs in software (always, headless).
        page.add_style_tag(content=".mantine-Notifications-root { display: none !important; }")
        page.wait_for_timeout(100)
        page.screenshot(path=str(out))
    return out
