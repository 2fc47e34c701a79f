"""The page's own panel: generate views and distil a scene from an export, while you watch.

``Generate`` runs what ``infer.py sample`` runs (``generate_views`` on an orbit with the export's
sample settings, the prompt, guidance and seed of the panel) and shows the joint views as
frustums with their pictures. ``Distil`` runs what ``infer.py sds`` runs (``ScoreDistillation``
steps from the SDS preset given, or the defaults) and redraws the splats every few steps. One
job runs at a time, in a worker thread; ``Stop`` ends it at the prior's next call (a forward
pre-hook on the UNet raises), so a generation stops within one denoising step. The export is
loaded once, at the first job. Every error is shown in the page and logged; the server goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from viewdiff.config import Config, check_config, load_config
from viewdiff.inference.autoregressive import check_sample_config, generate_views
from viewdiff.inference.outputs import to_frames
from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.prior.load import ExportInfo, MultiViewPrior, chosen_device, load_export, read_export
from viewdiff.sds.cameras import camera_ranges
from viewdiff.sds.loop import ScoreDistillation, initial_scene
from viewdiff.viewer.scene import COLORS, ViewerState, set_value
from viewdiff.viewer.sources import Source, View, splats_from_scene

logger = logging.getLogger(__name__)

Job = Literal["generate", "distil"]
GENERATION, DISTILLATION = "live: generation", "live: distillation"
MAX_LIVE_VIEWS = 120  # views one Generate makes (more is a typo in a number box)
SPLAT_UPDATE_SECONDS = 1.0  # a distillation redraws its splats at most this often


class Cancelled(Exception):
    """Stop was pressed: the job ends at the prior's next call."""


class LivePanel:
    """The GUI folder that generates and distils with an export, and the one job it runs."""

    def __init__(
        self,
        state: ViewerState,
        export: Path,
        base: Path | None = None,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        sds_preset: Path | None = None,
    ) -> None:
        self.state, self.export, self.base, self.dtype = state, Path(export), base, dtype
        self.device = chosen_device(device)
        self.sds_preset = sds_preset
        self._prior: MultiViewPrior | None = None
        self._prior_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()  # two pages may click at once
        self._cancel = threading.Event()
        self.last_error: str | None = None
        info, config, problem = self._read_settings()
        sample = (info.config if info is not None else Config()).sample
        views = info.config.data.n_views if info is not None else 4
        gui = state.server.gui
        with gui.add_folder("generate / distil", order=2):
            self.prompt = gui.add_text("prompt", "a red ball")
            self.views = gui.add_number("views", views, min=1, max=MAX_LIVE_VIEWS, step=1)
            self.guidance = gui.add_number("guidance", sample.guidance_scale, min=0.0, step=0.5)
            self.seed = gui.add_number("seed", 0, min=0, step=1)
            self.generate_button = gui.add_button("Generate")
            self.sds_steps = gui.add_number("SDS steps", config.sds.steps, min=1, step=1)
            self.sds_guidance = gui.add_number(
                "SDS guidance", config.sds.guidance_scale, min=0.0, step=0.5
            )
            self.distil_button = gui.add_button("Distil")
            self.stop_button = gui.add_button("Stop", disabled=True)
            self.progress = gui.add_progress_bar(0.0, visible=False)
            self.status = gui.add_markdown(f"export `{self.export}`: loaded at the first job")
        self.generate_button.on_click(lambda _: self._click("generate"))
        self.distil_button.on_click(lambda _: self._click("distil"))
        self.stop_button.on_click(lambda _: self.stop())
        if problem is not None:
            self.report_error(problem)

    def _read_settings(self) -> tuple[ExportInfo | None, Config, str | None]:
        """The export's settings (no weights) and the SDS preset's, or the error to show."""
        config = Config()
        try:
            config = load_config(self.sds_preset)
            info = read_export(self.export, self.base)
        except ValueError as error:
            return None, config, str(error)
        return info, config, None

    # Jobs.

    @property
    def busy(self) -> bool:
        """Whether a job runs now."""
        return self._worker is not None and self._worker.is_alive()

    def start(self, job: Job) -> bool:
        """Run ``job`` in a worker thread; False (and a message) if one runs already."""
        with self._start_lock:
            if self.busy:
                self.set_status("a job runs: press Stop first")
                return False
            self._cancel.clear()
            run: Callable[[], None] = self.generate if job == "generate" else self.distil
            self._worker = threading.Thread(target=self._run, args=(job, run), daemon=True)
            self._worker.start()
            return True

    def _click(self, job: Job) -> None:
        """A button's callback: start the job (or say why not)."""
        self.start(job)

    def stop(self) -> None:
        """Ask the running job to end at its next step."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running job to end (tests, --screenshot)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def _run(self, job: Job, run: Callable[[], None]) -> None:
        """One job: buttons and progress around it, every error shown, never raised."""
        self.last_error = None
        self._set_running(True, animated=job == "generate")
        started = time.perf_counter()
        try:
            run()
            self.set_status(f"{job}: done in {time.perf_counter() - started:.1f} s")
        except Cancelled:
            self.set_status(f"{job}: stopped after {time.perf_counter() - started:.1f} s")
        except ValueError as error:  # bad input: a prompt, an export, a setting
            self.report_error(f"{job}: {error}")
        except Exception as error:  # anything else is logged in full, and the server goes on
            logger.exception("%s failed", job)
            self.report_error(f"{job} failed: {type(error).__name__}: {error}")
        finally:
            self._set_running(False)

    def prior(self) -> MultiViewPrior:
        """The export on the panel's device, loaded at the first call only."""
        with self._prior_lock:
            if self._prior is None:
                self.set_status(f"loading `{self.export}` on {self.device} ...")
                self._prior = load_export(self.export, self.device, self.dtype, base=self.base)
            return self._prior

    def _prompt(self) -> str:
        """The panel's prompt, refused when empty."""
        prompt = self.prompt.value.strip()
        if not prompt:
            raise ValueError("the prompt is empty: type what the object is")
        return prompt

    def generate(self) -> None:
        """Joint views of the prompt on the export's orbit, shown as frustums with pictures."""
        prompt, views, seed = self._prompt(), int(self.views.value), int(self.seed.value)
        if not 1 <= views <= MAX_LIVE_VIEWS:
            raise ValueError(f"views must be in [1, {MAX_LIVE_VIEWS}], got {views}")
        prior = self.prior()
        config = prior.info.config
        sample = dataclasses.replace(
            config.sample, guidance_scale=float(self.guidance.value), seed=seed
        )
        check_sample_config(sample)
        size = config.data.image_size
        orbit = orbit_trajectory(views, sample.elevation_deg, sample.radius, size, sample.fov_deg)
        self.set_status(f"generating {views} views of {prompt!r} ...")
        with self._cancellable(prior):
            images = generate_views(prior, [prompt], orbit, sample, [seed], show_progress=False)
        frames = to_frames(images[0])  # (V, H, W, 3) uint8
        shown = tuple(
            View(
                f"view {i}",
                orbit.K[i].numpy(),
                orbit.w2c[i].numpy(),
                orbit.image_size_hw,
                image=frames[i],
            )
            for i in range(views)
        )
        info = {"prompt": prompt, "command": "sample (live)", "seed": seed}
        source = Source("generation", self.export, GENERATION, views=shown, info=info)
        self.state.add(source, color=COLORS["live"])

    def distil(self) -> None:
        """Score distillation of the prompt, its splats redrawn as it goes."""
        prompt = self._prompt()
        preset = load_config(self.sds_preset)
        config = dataclasses.replace(
            preset.sds,
            steps=int(self.sds_steps.value),
            guidance_scale=float(self.sds_guidance.value),
            seed=int(self.seed.value),
        )
        check_config(dataclasses.replace(preset, sds=config), source="the panel")
        prior = self.prior()
        ranges = camera_ranges(prior.info.path, prior.info.config.sample, config)
        run = ScoreDistillation(prior, config, prompt, initial_scene(config), ranges)
        info = {"prompt": prompt, "command": "sds (live)", "steps": config.steps}
        source = Source("sds", self.export, DISTILLATION, info=info,
                        splats=splats_from_scene(run.fitter.scene))  # fmt: skip
        self.state.add(source)
        shown_at = time.perf_counter()
        try:
            with self._cancellable(prior):
                while run.step_count < config.steps:
                    report = run.step()
                    step = run.step_count
                    set_value(self.progress, 100.0 * step / config.steps)
                    if time.perf_counter() - shown_at > SPLAT_UPDATE_SECONDS:
                        self.state.update_splats(DISTILLATION, splats_from_scene(run.fitter.scene))
                        self.set_status(
                            f"distilling {prompt!r}: step {step} of {config.steps}, "
                            f"{report.gaussians} Gaussians, loss {report.loss:.4g}"
                        )
                        shown_at = time.perf_counter()
        finally:  # the last steps' scene, stopped or done
            self.state.update_splats(DISTILLATION, splats_from_scene(run.fitter.scene))

    def _cancellable(self, prior: MultiViewPrior) -> _CancelHook:
        """A context in which every call of the prior's UNet first checks Stop."""
        return _CancelHook(prior.model, self._cancel)

    # What the page shows.

    def set_status(self, text: str) -> None:
        """The panel's status line."""
        self.status.content = text

    def report_error(self, message: str) -> None:
        """An error in the panel and as a notification to every page, and in the log."""
        self.last_error = message
        logger.error("infer.py view: %s", message)
        self.status.content = f"**error**: {message}"
        for client in self.state.server.get_clients().values():
            client.add_notification("viewdiff", message, color="red", auto_close_seconds=15.0)

    def _set_running(self, running: bool, animated: bool = False) -> None:
        """Buttons and progress bar while a job runs, or after."""
        self.generate_button.disabled = running
        self.distil_button.disabled = running
        self.stop_button.disabled = not running
        self.progress.animated = animated
        set_value(self.progress, 100.0 if animated else 0.0)
        self.progress.visible = running


class _CancelHook:
    """A forward pre-hook on a module that raises Cancelled once ``cancel`` is set."""

    def __init__(self, module: torch.nn.Module, cancel: threading.Event) -> None:
        self.module, self.cancel = module, cancel
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def _check(self, module: torch.nn.Module, args: object) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def __enter__(self) -> _CancelHook:
        self.handle = self.module.register_forward_pre_hook(self._check)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()
