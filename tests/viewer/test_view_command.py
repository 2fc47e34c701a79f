"""``infer.py view`` without a browser: the server on a free port, what ``show_sources`` adds
(counts, frustum poses, the progress slider, the before/after toggle, the layouts), the live
panel on the shipped toy prior, and the command's one-line exits."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import viser.transforms as vtf
from PIL import Image

import infer
from viewdiff.cameras.orbits import orbit
from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.scene.gaussians import random_scene, write_gaussian_ply
from viewdiff.viewer.live import DISTILLATION, GENERATION, LivePanel
from viewdiff.viewer.scene import box_segments, frustum_pose, show_sources, vertical_fov
from viewdiff.viewer.server import port_in_use, server_url, start_server
from viewdiff.viewer.sources import ProgressStep, Source, View, splats_from_scene

TOY_PRIOR = Path(__file__).resolve().parents[2] / "viewdiff" / "assets" / "toy" / "multiview"
SDS_TINY = Path(__file__).resolve().parents[2] / "configs" / "sds_tiny.yaml"


@pytest.fixture
def server() -> Iterator:
    """A viewer server on a free port of this machine, stopped after the test."""
    server = start_server("127.0.0.1", 0)
    yield server
    server.stop()


def _splats(count: int, seed: int = 0):
    return splats_from_scene(random_scene(count, generator=torch.Generator().manual_seed(seed)))


def _views(count: int, size: int = 16, pictures: bool = True) -> tuple[View, ...]:
    orbit_cameras = orbit_trajectory(count, 30.0, 4.0, size)
    image = np.full((size, size, 3), 90, np.uint8)
    return tuple(
        View(
            f"view {i}",
            orbit_cameras.K[i].numpy(),
            orbit_cameras.w2c[i].numpy(),
            (size, size),
            image=image if pictures else None,
        )
        for i in range(count)
    )


def _progress(folder: Path, steps: list[int]) -> tuple[ProgressStep, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        Image.new("RGB", (8, 4), (step, 0, 0)).save(folder / f"step-{step}.png")
    return tuple(ProgressStep(step, folder / f"step-{step}.png") for step in steps)


def _ply(path: Path, count: int = 12) -> Path:
    write_gaussian_ply(path, random_scene(count, generator=torch.Generator().manual_seed(0)))
    return path


def test_frustum_pose_is_the_camera_to_world_of_the_w2c() -> None:
    w2c = orbit(5, 30.0, 4.0).numpy()
    for camera in w2c:
        wxyz, position = frustum_pose(camera)
        rotation = vtf.SO3(wxyz).as_matrix()
        np.testing.assert_allclose(rotation @ camera[:3, :3], np.eye(3), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(position), 4.0, atol=1e-5)
        # OpenCV and viser frustums look down their +z: at the box centre here.
        np.testing.assert_allclose(rotation[:, 2], -position / 4.0, atol=1e-5)
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    assert vertical_fov(K, 64) == pytest.approx(2 * np.arctan(0.32))
    segments = box_segments()
    assert segments.shape == (12, 2, 3)
    assert np.allclose(np.abs(segments[:, 0] - segments[:, 1]).sum(-1), 2.0)


def test_show_sources_records_what_it_added(server, tmp_path: Path) -> None:
    sources = [
        Source("scene", tmp_path / "a.ply", "a.ply", splats=_splats(50), views=_views(4)),
        Source("generation", tmp_path / "gen", "gen", views=_views(3)),
        Source("sds", tmp_path / "sds", "sds", splats=_splats(30), views=_views(2, pictures=False),
               progress=_progress(tmp_path / "progress", [1, 5, 9]), info={"prompt": "a ball"}),
        Source("edit-scene", tmp_path / "edit", "edit", splats=_splats(20),
               before=_splats(40, seed=1), progress=_progress(tmp_path / "edit", [10])),
    ]  # fmt: skip
    state = show_sources(server, sources, "side")
    assert state.counts() == {
        "a.ply": {"splats": 50, "frustums": 4},
        "gen": {"splats": 0, "frustums": 3},
        "sds": {"splats": 30, "frustums": 2},
        "edit": {"splats": 20, "frustums": 0},
    }
    # Side by side along +x, none overlapping another.
    xs = [shown.offset[0] for shown in state.shown]
    assert xs == sorted(xs) and len(set(xs)) == 4
    for left, right in zip(state.shown, state.shown[1:], strict=False):
        assert left.offset[0] + left.reach < right.offset[0] - right.reach
    # The progress slider shows the step picked.
    sds = state.find("sds")
    assert sds.progress_slider is not None and sds.progress_slider.value == 2
    sds.progress_slider.value = 0
    assert sds.progress_caption.content.startswith("step 1 (1 of 3 saved)")
    assert sds.progress_image.image[0, 0, 0] == 1
    # The before/after toggle swaps the edited scene for the original.
    edit = state.find("edit")
    assert edit.before.visible is False and edit.splats.visible is True
    assert edit.progress_slider is None and edit.progress_image is not None  # one step: no slider
    edit.before_toggle.value = True
    assert edit.before.visible is True and edit.splats.visible is False
    # A frustum's click shows its view full size.
    state.show_view(state.find("gen"), 2)
    assert "view 2" in state.selected_caption.content and state.selected_image.visible
    state.show_view(sds, 0)
    assert "no picture" in state.selected_caption.content and not state.selected_image.visible
    # Replacing a source keeps its place; removing one takes its nodes.
    state.add(Source("generation", tmp_path / "gen", "gen", views=_views(5)))
    assert state.counts()["gen"] == {"splats": 0, "frustums": 5}
    assert state.find("gen").offset[0] == xs[1]
    assert list(state.counts()) == ["a.ply", "gen", "sds", "edit"]
    state.remove("gen")
    assert "gen" not in state.counts()


def test_the_toggle_layout_shows_one_source_at_a_time(server, tmp_path: Path) -> None:
    sources = [Source("scene", tmp_path / n, n, splats=_splats(10)) for n in ("one", "two")]
    state = show_sources(server, sources, "toggle")
    assert state.chooser is not None and state.chooser.options == ("one", "two")
    assert [s.frame.visible for s in state.shown] == [True, False]
    assert all(np.allclose(s.offset, 0.0) for s in state.shown)
    state.chooser.value = "two"
    assert [s.frame.visible for s in state.shown] == [False, True]
    assert [s.folder.visible for s in state.shown] == [False, True]
    # A source added later (the live panel's) is listed and shown.
    state.add(Source("generation", tmp_path / "three", "three", views=_views(2)))
    assert state.chooser.options == ("one", "two", "three") and state.chooser.value == "three"
    assert [s.frame.visible for s in state.shown] == [False, False, True]


def test_a_taken_port_is_refused_not_moved() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is in use"):
            start_server("127.0.0.1", port)


def _exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], usage: bool = False) -> str:
    """Run infer.py; it must exit 2 with one line on stderr (after the usage, for argparse's
    own checks), returned."""
    with pytest.raises(SystemExit) as exit:
        infer.main(argv)
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert usage or len(lines) == 1, lines
    return lines[-1]


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    ply = _ply(tmp_path / "scene.ply")
    line = _exit_2(["view", str(tmp_path / "nothing")], capsys)
    assert line.startswith("infer.py view: error:") and str(tmp_path / "nothing") in line
    (tmp_path / "empty").mkdir()
    assert "generation folder" in _exit_2(["view", str(tmp_path / "empty")], capsys)
    assert "nothing to show" in _exit_2(["view"], capsys)
    assert "give --screenshot" in _exit_2(["view", str(ply), "--size", "10x10"], capsys)
    assert "expected WIDTHxHEIGHT" in _exit_2(["view", str(ply), "--size", "big"], capsys, True)
    assert ".png file" in _exit_2(["view", str(ply), "--screenshot", str(tmp_path)], capsys)
    missing = ["view", str(ply), "--checkpoint", str(tmp_path / "no-export")]
    assert "checkpoint not found" in _exit_2(missing, capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert f"port {port}" in _exit_2(["view", str(ply), "--port", port], capsys)


def test_it_serves_until_ctrl_c(tmp_path: Path, capsys, monkeypatch) -> None:
    ply = _ply(tmp_path / "scene.ply", 12)
    pages = []

    def interrupted() -> None:  # the page is served while the command waits
        url = capsys.readouterr().out.split()[2].rstrip(":")
        pages.append(urllib.request.urlopen(url, timeout=10).read())

    monkeypatch.setattr("viewdiff.commands.view.wait_for_interrupt", interrupted)
    assert infer.main(["view", str(ply), "--port", "0"]) == 0
    assert b"<html" in pages[0].lower()


def test_screenshot_calls_the_browser_helper(tmp_path: Path, monkeypatch, capsys) -> None:
    ply = _ply(tmp_path / "scene.ply", 12)
    calls = []

    def screenshot(url: str, out: Path, size: tuple[int, int]) -> Path:
        calls.append((url, size))
        Image.new("RGB", size).save(out)
        return out

    monkeypatch.setattr("viewdiff.viewer.browser.screenshot", screenshot)
    out = tmp_path / "shot.png"
    assert infer.main(["view", str(ply), "--screenshot", str(out), "--size", "320x200"]) == 0
    assert out.is_file() and calls[0][1] == (320, 200)
    assert calls[0][0].startswith("http://127.0.0.1:")
    assert "12 Gaussians" in capsys.readouterr().out


def test_the_live_panel_generates_distils_and_shows_errors(server) -> None:
    state = show_sources(server, [], "side")
    panel = LivePanel(state, TOY_PRIOR, sds_preset=SDS_TINY)
    panel.prompt.value = "  "
    assert panel.start("generate")
    panel.wait(60)
    assert "prompt is empty" in panel.last_error and "error" in panel.status.content
    panel.prompt.value, panel.views.value = "a red ball", 3
    assert panel.start("generate")
    panel.wait(120)
    assert panel.last_error is None, panel.last_error
    assert state.counts()[GENERATION] == {"splats": 0, "frustums": 3}
    assert state.find(GENERATION).source.views[0].pixels().shape == (64, 64, 3)
    panel.sds_steps.value = 2
    assert panel.start("distil")
    panel.wait(120)
    assert panel.last_error is None, panel.last_error
    assert state.counts()[DISTILLATION]["splats"] > 0 and "done" in panel.status.content
    # Stop ends a long run at its next step; the server and the panel go on.
    panel.sds_steps.value = 10_000
    assert panel.start("distil")
    assert not panel.start("generate")  # one job at a time
    panel.stop()
    panel.wait(120)
    assert "stopped" in panel.status.content and not panel.busy
    assert server_url(server).startswith("http://127.0.0.1:")


def test_the_live_panel_shows_a_missing_export_in_the_page(server, tmp_path: Path, caplog) -> None:
    state = show_sources(server, [], "side")
    with caplog.at_level(logging.ERROR, logger="viewdiff.viewer.live"):
        panel = LivePanel(state, tmp_path / "no-export")
        assert "checkpoint not found" in panel.status.content
        assert panel.start("generate")
        panel.wait(60)
    assert "checkpoint not found" in panel.last_error and not panel.busy
    assert caplog.text.count("checkpoint not found") == 2  # logged at start and at the click


def test_a_bad_sds_preset_exits_2(tmp_path: Path) -> None:
    """A bad --sds-config exits 2 before the server starts (as infer.py sds refuses it)."""
    (tmp_path / "bad.yaml").write_text(json.dumps({"sds": {"nonsense": 1}}))
    ply = _ply(tmp_path / "scene.ply")
    argv = ["view", str(ply), "--checkpoint", str(TOY_PRIOR), "--sds-config",
            str(tmp_path / "bad.yaml")]  # fmt: skip
    with pytest.raises(SystemExit) as exit:
        infer.main(argv)
    assert exit.value.code == 2
