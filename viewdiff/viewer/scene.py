"""Loaded sources put into a viser server, with a record of what was added.

Each source gets a frame node ``<prefix>/<index>`` holding its splats (and an edit's original,
hidden until the before/after toggle shows it), its camera frustums with their views on them, the
object box [-1, 1]^3 as lines and its name; and a GUI folder with what it is, the progress
slider of an SDS or edit-scene run and the before/after toggle. Several sources stand side by
side along +x (``side``) or one at a time, picked in a dropdown (``toggle``). Clicking a frustum
shows its view full size in the GUI.

viser's cameras, frustums included, follow OpenCV's (+z forward, +x right, +y down), as our
cameras.json does: a frustum's pose is the camera-to-world inverse of the w2c, with no axis flip.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import viser
import viser.transforms as vtf
from PIL import Image

from viewdiff.viewer.sources import Source, Splats, View, read_picture

Layout = Literal["side", "toggle"]
LAYOUTS: tuple[Layout, ...] = ("side", "toggle")

THUMBNAIL_SIDE = 256  # pixels of a frustum's picture; the full view goes to the GUI on a click
FRUSTUM_SCALE = 0.07  # a frustum's depth, as a fraction of its camera's distance to the origin
GAP = 0.75  # between the reaches of two sources side by side, scene units
PROGRESS_ROWS = {"sds": "renders, z_t, one-step x0, full denoise from t",
                 "edit-scene": "pseudo ground truth over the renders"}  # fmt: skip
"""What the rows of a run's progress pictures are."""
COLORS = {"generation": (30, 90, 200), "turntable": (150, 150, 150), "live": (230, 120, 20)}


def set_value(handle: object, value: object) -> None:
    """Assign a GUI input's value (its callbacks run): viser defines the setter apart from
    its getter, where mypy sees the property as read-only."""
    setattr(handle, "value", value)  # noqa: B010


def frustum_pose(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """viser's pose of an OpenCV camera: (wxyz (4,), position (3,)) of its camera-to-world."""
    R, t = np.asarray(w2c, np.float64)[:3, :3], np.asarray(w2c, np.float64)[:3, 3]
    rotation = R.T  # camera axes in world coordinates, columns
    position = -R.T @ t  # the camera centre
    return vtf.SO3.from_matrix(rotation).wxyz, position


def vertical_fov(K: np.ndarray, height: int) -> float:
    """The vertical field of view in radians of a pinhole K (3, 3) for images ``height`` high
    (centred principal point: viser draws no offset)."""
    return float(2.0 * np.arctan(height / (2.0 * float(K[1, 1]))))


def box_segments(half: float = 1.0) -> np.ndarray:
    """The 12 edges (12, 2, 3) of the cube [-half, half]^3: the normalised object box."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8)
             if np.abs(corners[a] - corners[b]).sum() == 2]  # fmt: skip
    return half * np.stack([corners[[a, b]] for a, b in edges])


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The image (H, W, 3) uint8 shrunk to at most ``side`` pixels on its longer side."""
    height, width = image.shape[:2]
    if max(height, width) <= side:
        return image
    picture = Image.fromarray(image)
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(picture)


def reach(source: Source) -> float:
    """How far from the origin (in x and y) a source's box, splats and cameras go."""
    extents = [1.0]
    if source.splats is not None and len(source.splats):
        extents.append(float(np.percentile(np.abs(source.splats.centers[:, :2]), 99)))
    for view in source.views:
        extents.append(float(np.abs(frustum_pose(view.w2c)[1][:2]).max()))
    return max(extents)


@dataclass
class ShownSource:
    """What one source added to the server: its handles, and so its counts."""

    source: Source
    root: str  # the name of the frame node every part hangs under
    frame: viser.FrameHandle
    offset: np.ndarray  # (3,) where its origin stands
    reach: float
    folder: viser.GuiFolderHandle
    splats: viser.GaussianSplatHandle | None = None
    before: viser.GaussianSplatHandle | None = None
    frustums: list[viser.CameraFrustumHandle] = field(default_factory=list)
    progress_slider: viser.GuiSliderHandle | None = None
    progress_image: viser.GuiImageHandle | None = None
    progress_caption: viser.GuiMarkdownHandle | None = None
    before_toggle: viser.GuiCheckboxHandle | None = None

    @property
    def name(self) -> str:
        """The source's unique name."""
        return self.source.name

    @property
    def splat_count(self) -> int:
        """Gaussians drawn (the edited scene's; the original is not counted)."""
        return 0 if self.source.splats is None else len(self.source.splats)

    @property
    def frustum_count(self) -> int:
        """Camera frustums drawn."""
        return len(self.frustums)


@dataclass
class ViewerState:
    """The server and what is shown on it: the record tests read, the handles callbacks use."""

    server: viser.ViserServer
    layout: Layout
    prefix: str
    selected_image: viser.GuiImageHandle
    selected_caption: viser.GuiMarkdownHandle
    chooser: viser.GuiDropdownHandle | None = None
    shown: list[ShownSource] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _next_node: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        """{source name: {"splats": P, "frustums": V}} of everything shown."""
        with self.lock:
            return {s.name: {"splats": s.splat_count, "frustums": s.frustum_count}
                    for s in self.shown}  # fmt: skip

    def find(self, name: str) -> ShownSource:
        """The shown source of that name (a KeyError if none)."""
        with self.lock:
            for shown in self.shown:
                if shown.name == name:
                    return shown
        raise KeyError(name)

    def add(self, source: Source, color: tuple[int, int, int] | None = None) -> ShownSource:
        """Show a source (replacing one of the same name, in its place); the toggle layout
        switches to it."""
        with self.lock:
            old = next((s for s in self.shown if s.name == source.name), None)
            source_reach = reach(source)
            index = len(self.shown) if old is None else self.shown.index(old)
            if self.layout == "toggle" or not self.shown:
                offset = np.zeros(3)
            elif old is not None:
                offset = old.offset
            else:
                last = self.shown[-1]
                offset = np.array([last.offset[0] + last.reach + GAP + source_reach, 0.0, 0.0])
            if old is not None:
                self.remove(old.name)
            shown = self._draw(source, offset, source_reach, color)
            self.shown.insert(index, shown)
            self._update_chooser(select=source.name)
            return shown

    def remove(self, name: str) -> None:
        """Take a source off the scene and the GUI."""
        with self.lock:
            shown = self.find(name)
            shown.frame.remove()
            shown.folder.remove()
            self.shown.remove(shown)
            self._update_chooser()

    def update_splats(self, name: str, splats: Splats) -> None:
        """Replace the splats of a shown source (a distillation as it goes)."""
        with self.lock:
            shown = self.find(name)
            shown.source = replace(shown.source, splats=splats)
            shown.splats = _add_splats(self.server, f"{shown.root}/splats", splats)

    def choose(self, name: str) -> None:
        """Show only the source ``name`` (the toggle layout's dropdown)."""
        with self.lock:
            for shown in self.shown:
                visible = shown.name == name
                shown.frame.visible = visible
                shown.folder.visible = visible

    def show_view(self, shown: ShownSource, index: int) -> None:
        """The view ``index`` of a shown source, full size in the GUI (a frustum's click)."""
        view = shown.source.views[index]
        pixels = view.pixels()
        height, width = view.size_hw
        fov = np.degrees(vertical_fov(view.K, height))
        caption = f"**{shown.name}**: {view.name}, {width}x{height} px, vertical fov {fov:.1f} deg"
        if pixels is None:
            caption += " (no picture)"
        else:
            self.selected_image.image = pixels
        self.selected_image.visible = pixels is not None
        self.selected_caption.content = caption

    # Drawing one source.

    def _draw(
        self, source: Source, offset: np.ndarray, source_reach: float, color: tuple | None
    ) -> ShownSource:
        """Add a source's nodes and GUI folder."""
        scene, gui = self.server.scene, self.server.gui
        root = f"{self.prefix}/{self._next_node}"
        self._next_node += 1
        visible = self.layout == "side" or not self.shown  # toggle: the chooser decides
        frame = scene.add_frame(root, show_axes=False, position=offset, visible=visible)
        scene.add_line_segments(f"{root}/box", box_segments(), (120, 120, 120), thickness=0.01)
        scene.add_label(f"{root}/name", source.name, position=(-1.0, -1.0, 1.05))
        folder = gui.add_folder(source.name, order=10 + self._next_node, visible=visible)
        shown = ShownSource(source, root, frame, offset, source_reach, folder)
        if source.splats is not None:
            shown.splats = _add_splats(self.server, f"{root}/splats", source.splats)
        if source.before is not None:
            shown.before = _add_splats(self.server, f"{root}/before", source.before, False)
        default = COLORS["generation" if source.kind == "generation" else "turntable"]
        for index, view in enumerate(source.views):
            shown.frustums.append(self._add_frustum(shown, index, view, color or default))
        with folder:
            gui.add_markdown(summary(source))
            if source.before is not None:
                shown.before_toggle = gui.add_checkbox("show the original (before)", False)
                shown.before_toggle.on_update(lambda _: _show_before(shown))
            if source.progress:
                _add_progress(self.server, shown)
        return shown

    def _add_frustum(
        self, shown: ShownSource, index: int, view: View, color: tuple[int, int, int]
    ) -> viser.CameraFrustumHandle:
        """One camera as a frustum with its picture; a click shows the picture full size."""
        wxyz, position = frustum_pose(view.w2c)
        height, width = view.size_hw
        pixels = view.pixels()
        frustum = self.server.scene.add_camera_frustum(
            f"{shown.root}/cameras/{index}",
            fov=vertical_fov(view.K, height),
            aspect=width / height,
            scale=FRUSTUM_SCALE * float(np.linalg.norm(position)),
            thickness=0.01,
            color=color,
            image=None if pixels is None else thumbnail(pixels),
            wxyz=wxyz,
            position=position,
        )
        frustum.on_click(lambda _: self.show_view(shown, index))
        return frustum

    def _update_chooser(self, select: str | None = None) -> None:
        """The toggle layout's dropdown lists the sources shown."""
        if self.chooser is None:
            return
        names = [s.name for s in self.shown] or ["(nothing)"]
        current = self.chooser.value
        self.chooser.options = names
        chosen = select or (current if current in names else names[-1])
        set_value(self.chooser, chosen)
        self.choose(chosen)


def _add_splats(
    server: viser.ViserServer, name: str, splats: Splats, visible: bool = True
) -> viser.GaussianSplatHandle:
    """Gaussian splats as viser draws them (a node of the same name is replaced)."""
    return server.scene.add_gaussian_splats(
        name,
        centers=splats.centers,
        covariances=splats.covariances,
        rgbs=splats.rgbs,
        opacities=splats.opacities,
        visible=visible,
    )


def _show_before(shown: ShownSource) -> None:
    """The before/after toggle: the original scene or the edited one."""
    before = shown.before_toggle is not None and shown.before_toggle.value
    if shown.before is not None:
        shown.before.visible = before
    if shown.splats is not None:
        shown.splats.visible = not before


def _add_progress(server: viser.ViserServer, shown: ShownSource) -> None:
    """The saved progress pictures of a run: a slider over the steps and the picture."""
    steps = shown.source.progress
    shown.progress_caption = server.gui.add_markdown(_progress_caption(shown, len(steps) - 1))
    shown.progress_image = server.gui.add_image(read_picture(steps[-1].path), label="progress")
    if len(steps) < 2:
        return
    slider = server.gui.add_slider("progress", 0, len(steps) - 1, 1, len(steps) - 1)
    shown.progress_slider = slider

    def show(_: object) -> None:
        index = int(slider.value)
        assert shown.progress_image is not None and shown.progress_caption is not None
        shown.progress_image.image = read_picture(steps[index].path)
        shown.progress_caption.content = _progress_caption(shown, index)

    slider.on_update(show)


def _progress_caption(shown: ShownSource, index: int) -> str:
    """Which saved step the progress picture is."""
    steps = shown.source.progress
    rows = PROGRESS_ROWS.get(shown.source.kind, "")
    return f"step {steps[index].step} ({index + 1} of {len(steps)} saved): {rows}"


def summary(source: Source) -> str:
    """A few lines of markdown on what a source is."""
    info = source.info
    lines = [f"**{source.kind}** `{source.path}`"]
    for key in ("prompt", "source_prompt", "command", "steps", "gaussians"):
        if key in info and not isinstance(info[key], (dict, list)):
            lines.append(f"{key.replace('_', ' ')}: {info[key]}")
    if source.splats is not None:
        lines.append(f"{len(source.splats)} Gaussians (colour of SH degree 0)")
    if source.views:
        pictured = sum(view.image_path is not None or view.image is not None
                       for view in source.views)  # fmt: skip
        lines.append(f"{len(source.views)} cameras, {pictured} with their views (click one)")
    if source.progress:
        lines.append(f"{len(source.progress)} progress pictures")
    lines += [f"*{note}*" for note in source.notes]
    return "  \n".join(lines)


def show_sources(
    server: viser.ViserServer,
    sources: list[Source],
    layout: Layout = "side",
    prefix: str = "/sources",
) -> ViewerState:
    """Put every source into the server (side by side, or one at a time with a dropdown);
    the record of what was added."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    gui = server.gui
    chooser = None
    if layout == "toggle":
        names = [source.name for source in sources] or ["(nothing)"]
        chooser = gui.add_dropdown("show", names, initial_value=names[0], order=0)
    with gui.add_folder("selected view", order=1000):
        caption = gui.add_markdown("click a camera to see its view here")
        image = gui.add_image(np.full((8, 8, 3), 255, np.uint8), visible=False)
    state = ViewerState(server, layout, prefix, image, caption, chooser)
    for source in sources:
        state.add(source)
    if chooser is not None:
        chooser.on_update(lambda _: state.choose(chooser.value))
        set_value(chooser, chooser.options[0])  # the first PATH first
        state.choose(chooser.value)
    aim_initial_camera(state)
    return state


def aim_initial_camera(state: ViewerState) -> None:
    """Where a new page's camera starts: above and in front of everything shown."""
    shown = state.shown
    if not shown:
        return
    left = min(s.offset[0] - s.reach for s in shown)
    right = max(s.offset[0] + s.reach for s in shown)
    centre = np.array([(left + right) / 2.0, 0.0, 0.0])
    distance = max(5.0, 0.6 * (right - left) + 2.0)  # the width in a 75-degree view
    camera = state.server.initial_camera
    camera.look_at = centre
    camera.position = centre + distance * np.array([0.35, -0.85, 0.45])
