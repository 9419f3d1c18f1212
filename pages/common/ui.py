"""UI pieces every page shares: the kept result, the status box around a computation, charts and captions.

UI only. A result is kept in session state as a :class:`Shown` (with the request that produced it)
so the page can show it again on every rerun; computations run inside :func:`run_with_status`;
figures go through :func:`chart` with the toolbar format of :func:`figure_format`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from lldd_core.errors import LLDDError
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.spectra import FIGURE_FORMATS, download_config
from lldd_core.service import cache_only
from pages.common.link import replaying

#: The help of the figure format radio on most pages.
FIGURE_FORMAT_HELP = "Format of the camera button in each figure's toolbar: PNG (bitmap) or SVG (vector)."


@dataclass
class Shown:
    """A result kept in session state with the request that produced it.

    Defined here, not in a page: a page script is re-executed on every rerun, so a class defined
    there would be a new class each time and ``isinstance`` on last run's object would fail.
    """

    result: Any
    cache_hit: bool
    spec: ModelSpec
    prompt: str


def kept(key: str, kind: type) -> Shown | None:
    """The result kept in session state under ``key``, when it is a :class:`Shown` of a ``kind`` result."""
    last = st.session_state.get(key)
    return last if isinstance(last, Shown) and isinstance(last.result, kind) else None


def format_sci(value: float) -> str:
    """A small quantity such as a relative error: ``3.2e-16``."""
    return f"{value:.1e}"


def format_norm(value: float) -> str:
    """A norm or other O(1)-ish quantity with four significant digits."""
    return f"{value:.4g}"


def progress_reporter(bar: DeltaGenerator) -> Callable[[float, str], None]:
    """A ``progress(frac, msg)`` callback for the core that moves ``bar`` (clamped to [0, 1])."""

    def report(frac: float, msg: str) -> None:
        bar.progress(min(max(float(frac), 0.0), 1.0), text=msg)

    return report


def run_with_status(noun: str, call: Callable[[Callable[[float, str], None]], Any]) -> Any | None:
    """``call(progress)`` inside an ``st.status`` box with a progress bar ("Computing {noun}…").

    The label reports the wall time of the whole request (model loading and shared pieces included,
    not only the analysis's own ``elapsed_s``). Returns the service's ``Computed``; on a user error (:class:`LLDDError`) shows it with
    ``st.error`` below the collapsed box and returns ``None``.
    """
    if replaying():  # an opened link: the stored result or nothing, never a computation
        return stored(call)
    failure: LLDDError | None = None
    with st.status(f"Computing {noun}…", expanded=True) as status:
        bar = st.progress(0.0, text="Resolving the model and tokenizing")
        start = time.perf_counter()  # the whole request: resolving, loading, shared pieces, the analysis
        try:
            computed = call(progress_reporter(bar))
        except LLDDError as err:
            failure = err
            status.update(label=f"Could not compute the {noun}", state="error", expanded=False)
        else:
            bar.progress(1.0, text="Done")
            wall = time.perf_counter() - start
            source = f"Loaded from cache in {wall:.2f} s" if computed.cache_hit else f"Computed in {wall:.2f} s"
            status.update(label=f"{noun[0].upper()}{noun[1:]} ready — {source}", state="complete", expanded=False)
    if failure is not None:
        st.error(str(failure))  # outside the collapsed status box, so it is seen
        return None
    if getattr(computed, "warning", None):
        st.warning(computed.warning, icon="⚠️")  # e.g. a full or damaged cache: shown, but not stored
    return computed


def stored(call: Callable[[Callable[[float, str], None]], Any]) -> Any | None:
    """``call``'s stored result (``cache_hit``), or ``None`` when it is not stored or cannot be asked for:
    cache only, so nothing is loaded or computed (the user's next Compute shows any error)."""
    try:
        with cache_only():
            return call(lambda fraction, message: None)
    except LLDDError:
        return None


def plural(n: int, noun: str) -> str:
    """``1 result``, ``2 results``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def figure_format(key: str, container: DeltaGenerator | None = None, help: str | None = FIGURE_FORMAT_HELP) -> str:
    """The radio choosing the format the plotly toolbar's camera button saves a page's figures in."""
    where = st if container is None else container
    return where.radio("Figure download format", FIGURE_FORMATS, horizontal=True, key=key, help=help)


def result_or_hint(last: Shown | None, ready: bool, format_key: str, show: Callable[[Shown, str], None],
                   hint: str) -> str:
    """The figure-format radio (once there is a model or a result), then the kept result by ``show(last,
    fmt)``, or ``hint`` when nothing was computed yet; the chosen format."""
    fmt = "png"
    if ready or last is not None:
        fmt = figure_format(format_key)
    if last is not None:
        show(last, fmt)
    elif ready:
        st.info(hint)
    return fmt


def not_converged(max_residual: float, where: str = "", what: str = "singular values") -> None:
    """The warning under a matrix-free SVD that stopped before its tolerance."""
    st.warning(f"The matrix-free SVD did not reach its tolerance{where} (max residual {format_sci(max_residual)}): "
               f"the last {what} may be inaccurate. Try a smaller top-k or the full method.", icon="⚠️")


def chart(fig: go.Figure, key: str, fmt: str, name: str) -> None:
    """A plotly figure whose toolbar saves it as ``fmt`` under ``name``."""
    st.plotly_chart(fig, width="stretch", key=key, config=download_config(fmt, name))
