"""``infer.py view`` in a real browser: Debian's Chromium (headless, software WebGL, driven by
playwright) opens the viewer's page on (a) the shipped toy prior's generation folder, (b) an SDS
run, (c) the live panel, and the page must connect, hold the expected scene and draw it."""

import math
import time

import numpy as np
import pytest
import torch

from viewdiff.commands import infer
from viewdiff.scene.gaussians import GaussianScene, write_gaussian_ply
from viewdiff.scene.sh import rgb_to_sh0
from viewdiff.toy.assets import TOY_MULTIVIEW
from viewdiff.viewer.browser import canvas_image, is_blank, open_page, wait_for_scene
from viewdiff.viewer.live import LivePanel
from viewdiff.viewer.scene import show_sources
from viewdiff.viewer.server import server_url, start_server
from viewdiff.viewer.sources import load_sources

pytestmark = pytest.mark.usefixtures("chromium")
TIMEOUT_S = 120.0  # software WebGL on a busy 2-core machine: a page takes ~5 s when quiet


def red_ball(count: int = 400, seed: int = 0) -> GaussianScene:
    """A red ball of Gaussians in the object box, written directly (no renderer involved)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=1)
    radii = 0.6 * torch.rand(count, 1, generator=generator) ** (1 / 3)
    return GaussianScene(
        means=directions * radii,
        log_scales=torch.full((count, 3), math.log(0.06)),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(count, 1),
        opacity_logits=torch.full((count,), 4.0),
        f_dc=rgb_to_sh0(torch.tensor([[0.9, 0.05, 0.05]]).repeat(count, 1)),
        f_rest=torch.zeros(count, 0, 3),
    )


@pytest.fixture(scope="module")
def toy_generation(tmp_path_factory):
    """Four joint views of "a red ball" by the shipped toy prior (infer.py sample)."""
    out = tmp_path_factory.mktemp("view") / "generation"
    argv = ["sample", "--checkpoint", str(TOY_MULTIVIEW), "--prompt", "a red ball", "--views",
            "4", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert infer.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def sds_run(tmp_path_factory):
    """A short SDS run of the toy prior from a red ball (infer.py sds: scene, turntable,
    progress)."""
    folder = tmp_path_factory.mktemp("view")
    write_gaussian_ply(folder / "ball.ply", red_ball())
    argv = ["sds", "--checkpoint", str(TOY_MULTIVIEW), "--prompt", "a red ball", "--config",
            "configs/sds_tiny.yaml", "--init", str(folder / "ball.ply"), "--steps", "2",
            "--device", "cpu", "--out", str(folder / "sds")]  # fmt: skip
    assert infer.main(argv) == 0
    return folder / "sds"


@pytest.fixture
def server():
    """A viewer server on a free port, stopped after the test."""
    server = start_server("127.0.0.1", 0)
    yield server
    server.stop()


def connected(server, timeout_s: float = TIMEOUT_S) -> int:
    """The number of browser clients once at least one has connected."""
    deadline = time.monotonic() + timeout_s
    while not server.get_clients():
        assert time.monotonic() < deadline, "the page never connected to the viewer"
        time.sleep(0.1)
    return len(server.get_clients())


def reddish(image: np.ndarray) -> np.ndarray:
    """Pixels (H, W) where red clearly dominates: the red ball."""
    rgb = image.astype(np.int16)
    return (rgb[..., 0] > 120) & (rgb[..., 0] > rgb[..., 1] + 60) & (rgb[..., 0] > rgb[..., 2] + 60)


def test_a_generation_folder_shows_its_views_on_their_cameras(toy_generation, server):
    state = show_sources(server, load_sources([toy_generation]), "side")
    assert list(state.counts().values()) == [{"splats": 0, "frustums": 4}]
    with open_page(server_url(server), timeout_s=TIMEOUT_S) as page:
        assert connected(server) == 1
        image = wait_for_scene(page, TIMEOUT_S)
    assert not is_blank(image)
    # The views on the frustums are the toy prior's red balls.
    assert reddish(image).sum() > 30, "no red ball on the frustums' images"


def test_an_sds_run_shows_the_scene_in_its_colour_where_it_is(sds_run, server):
    state = show_sources(server, load_sources([sds_run]), "side")
    [counts] = state.counts().values()
    assert counts["splats"] > 100 and counts["frustums"] > 0
    with open_page(server_url(server), size=(640, 480), timeout_s=TIMEOUT_S) as page:
        connected(server)
        image = wait_for_scene(page, TIMEOUT_S)
    red = reddish(image)
    assert red.sum() > 200, "the red ball is not drawn"
    rows, columns = np.nonzero(red)
    # Where the object is: the initial camera looks at the box, so the ball is about the middle.
    height, width = red.shape
    assert abs(rows.mean() - height / 2) < height / 4
    assert abs(columns.mean() - width / 2) < width / 4


def test_the_live_panel_generates_new_frustums_from_a_typed_prompt(server):
    state = show_sources(server, [], "side")
    panel = LivePanel(state, TOY_MULTIVIEW, device="cpu")
    with open_page(server_url(server), timeout_s=TIMEOUT_S) as page:
        connected(server)
        for label, value in (("prompt", "a blue box"), ("views", "2")):
            # The input after its label (viser's text input is not tied to its label's id).
            field = page.locator(f"label:text-is('{label}')").locator("xpath=following::input[1]")
            field.fill(value)
            field.press("Enter")
        page.get_by_role("button", name="Generate").click()
        deadline = time.monotonic() + TIMEOUT_S
        while not any(c["frustums"] for c in state.counts().values()):
            assert time.monotonic() < deadline, f"no frustums; panel: {panel.status!r}"
            assert panel.last_error is None, panel.last_error
            page.wait_for_timeout(250)
        [counts] = [c for c in state.counts().values() if c["frustums"]]
        assert counts["frustums"] == 2  # the views typed in the page
        assert panel.prompt.value == "a blue box"  # what the page sent is what was generated
        assert not is_blank(canvas_image(page))
