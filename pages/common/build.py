"""First use of a demo model: build it with progress, robust to clicks (reruns) and to other tabs.

UI only: the build itself is :meth:`lldd_core.service.Service.ensure_demo`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

# Private, but the only way to recognise Streamlit's rerun/stop signals (see BuildProgress);
# streamlit is pinned in requirements.txt.
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from lldd_core.demo import demo_dir
from lldd_core.errors import LLDDError
from lldd_core.models.loading import ModelSpec
from lldd_core.service import get_service

FIRST_USE_BUILD = "The demo model is built on first use: ~1–3 minutes on a CPU, once."
#: A one-run message: "built in N s", shown after the rerun that follows a build.
BUILT_FLASH_KEY = "demo_build.flash"

@dataclass
class DemoBuild:
    """A demo build running in this process, as its progress callback last reported it."""

    started: float
    fraction: float = 0.0
    message: str = "Starting"


#: Demo builds in progress, by model id: process-wide, like the service, so a later run of the page
#: (or another tab) follows a running build instead of queueing a second one behind its lock.
_BUILDS: dict[str, DemoBuild] = {}
_BUILDS_LOCK = threading.Lock()


class BuildProgress:
    """The progress callback of a demo build: moves ``bar``, and lets a rerun wait for the build.

    Streamlit interrupts a script at its next ``st`` call when the user touches a widget (or
    leaves). A build interrupted that way would be thrown away and restart from zero on the next
    run, so any widget click in the first minutes would cost the whole build again. Instead the
    signal is kept, the build runs to its end, and :meth:`resume` raises the signal afterwards.
    Meanwhile the new run shows this build's progress from ``build`` (see :func:`follow_build`).
    """

    def __init__(self, bar: DeltaGenerator, build: DemoBuild) -> None:
        self.bar = bar
        self.build = build
        self.pending: ScriptControlException | None = None

    def __call__(self, frac: float, msg: str) -> None:
        self.build.fraction, self.build.message = min(max(float(frac), 0.0), 1.0), msg
        if self.pending is not None:
            return  # this page is being replaced: stop drawing, keep building
        try:
            self.bar.progress(self.build.fraction, text=msg)
        except ScriptControlException as signal:
            self.pending = signal

    def resume(self) -> None:
        """Raise the rerun or stop Streamlit asked for during the build, if any."""
        if self.pending is not None:
            raise self.pending


def follow_build(spec: ModelSpec, build: DemoBuild, bar: DeltaGenerator) -> str | None:
    """Show the progress of a build another run is doing until it ends; an error message or ``None``."""
    while _BUILDS.get(spec.model) is build:
        bar.progress(build.fraction, text=build.message)
        time.sleep(0.5)
    if get_service().needs_build(spec):
        return f"The build of {spec.model} did not finish. Reload the page to try again."
    return None


def build_or_follow(spec: ModelSpec, bar: DeltaGenerator) -> tuple[str | None, float]:
    """Build ``spec``'s demo model, or follow the build already running; (error message or ``None``, seconds)."""
    with _BUILDS_LOCK:
        build = _BUILDS.get(spec.model)
        mine = build is None
        if build is None:
            build = _BUILDS[spec.model] = DemoBuild(started=time.perf_counter())
    if not mine:
        return follow_build(spec, build, bar), time.perf_counter() - build.started
    progress = BuildProgress(bar, build)
    failure: str | None = None
    try:
        get_service().ensure_demo(spec, progress)
    except LLDDError as err:
        failure = str(err)
    except OSError as err:  # a read-only or full disk: the environment, not a bug in lldd
        failure = (
            f"Could not write {spec.model} to {demo_dir()}: {err.strerror or err}. "
            "Set LLDD_DEMO_DIR to a writable folder with some free space, then reload."
        )
    finally:
        with _BUILDS_LOCK:
            _BUILDS.pop(spec.model, None)
    progress.resume()  # a rerun the user asked for during the build replaces this one now
    return failure, time.perf_counter() - build.started


def ensure_model_ready(spec: ModelSpec) -> bool:
    """Build ``spec``'s demo model if it is missing, with an explanation and a progress bar.

    Call it before anything that resolves the model (``info()``). After a build the script reruns,
    so the sidebar shows the model as built. Returns ``False`` when there is nothing to analyse: no
    model entered (a hint is shown) or the build failed (an ``st.error``); the session keeps running.
    """
    flash = st.session_state.pop(BUILT_FLASH_KEY, None)
    if flash:
        st.success(flash, icon=":material/check_circle:")
    if not spec.model:  # "Other" with an empty field: a prompt, not an error
        st.info("Enter a hub id or the path of a local model directory in the sidebar.", icon=":material/arrow_back:")
        return False
    if not get_service().needs_build(spec):
        return True
    note = st.empty()
    note.info(
        f"{FIRST_USE_BUILD} lldd trains `{spec.model}` on its own generated corpus (nothing is downloaded) and "
        f"keeps it in `{demo_dir()}` for every later session.",
        icon=":material/construction:",
    )
    with st.status(f"Building {spec.model}…", expanded=True) as status:
        failure, seconds = build_or_follow(spec, st.progress(0.0, text="Starting"))
        if failure is not None:
            status.update(label=f"Could not build {spec.model}", state="error", expanded=False)
    if failure is not None:
        note.empty()
        st.error(failure)  # outside the collapsed status box, so it is seen
        return False
    st.session_state[BUILT_FLASH_KEY] = f"Built `{spec.model}` in {seconds:.0f} s; it is reused from now on."
    st.rerun()  # so the sidebar, drawn before the build, shows the model as built
