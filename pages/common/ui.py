"""UI pieces every page shares: the kept result, the status box around a computation, charts, tables, captions,
figure export and the report bundle.

UI only. A result is kept in session state as a :class:`Shown` (with the request that produced it)
so the page can show it again on every rerun; computations run inside :func:`run_with_status`;
figures go through :func:`chart` (the sidebar's theme, an export control per figure) and tables through
:func:`table` (columns as wide as their content); both are collected for the sidebar's report bundle
(:func:`report_button`, :mod:`lldd_core.store.report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from pandas.io.formats.style import Styler
from streamlit.delta_generator import DeltaGenerator

from lldd_core.errors import LLDDError
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.common import DASHBOARD, THEMES, Theme
from lldd_core.plots.export import MIME, ExportSettings, figure_bytes, figure_size, toolbar_config, unavailable
from lldd_core.plots.spectra import file_slug
from lldd_core.service import cache_only
from lldd_core.store.report import ReportContent, bundle
from pages.common import link
from pages.common.link import replaying

#: Widget keys of the sidebar's figure settings (pages/common/sidebar.py draws them).
THEME_KEY, SCALE_KEY, WIDTH_KEY = "sidebar_theme", "sidebar_export_scale", "sidebar_export_width"
#: What this run drew, for the report bundle: {"figures": [(name, fig)], "tables": [(name, frame)]}.
REPORT_ITEMS = "report.items"
#: The last report's content (tests read it; the button's zip is built from it on click).
REPORT_CONTENT = "report.content"
#: Formats the export control offers per figure.
EXPORT_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
#: Advance widths (px) of the table font (Source Sans at 14 px, Streamlit's grid) by character class: a width
#: estimate close to what the grid draws, so columns are as wide as their text and no wider.
NARROW, SEMI, WIDE = set("il.,:;'|!·•ıj "), set("frtI()[]{}-/\\\"`*"), set("mwMW@%")
NARROW_PX, SEMI_PX, WIDE_PX, UPPER_PX, OTHER_PX, NON_LATIN_PX = 3.9, 5.5, 13.3, 9.6, 7.9, 14.0
#: Padding of a cell (both sides) and of a header (its sort and menu icons); the bounds of a column.
PAD_PX, HEADER_PAD_PX, MIN_PX, MAX_PX = 18, 30, 48, 1400


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


def result_or_hint(last: Shown | None, ready: bool, show: Callable[[Shown], None], hint: str) -> None:
    """The kept result by ``show(last)``, or ``hint`` when there is a model but nothing was computed yet."""
    if last is not None:
        show(last)
    elif ready:
        st.info(hint)


def not_converged(max_residual: float, where: str = "", what: str = "singular values") -> None:
    """The warning under a matrix-free SVD that stopped before its tolerance."""
    st.warning(f"The matrix-free SVD did not reach its tolerance{where} (max residual {format_sci(max_residual)}): "
               f"the last {what} may be inaccurate. Try a smaller top-k or the full method.", icon="⚠️")


# --- figures -------------------------------------------------------------------------------------------
def current_theme() -> Theme:
    """The sidebar's figure theme (the dashboard's when none is chosen, e.g. a page run alone)."""
    return THEMES.get(str(st.session_state.get(THEME_KEY, DASHBOARD.name)), DASHBOARD)


def export_settings() -> ExportSettings:
    """The sidebar's export size and scale (the defaults when it has not drawn them)."""
    d = ExportSettings()
    try:
        scale = float(st.session_state.get(SCALE_KEY, d.scale))
        width = int(st.session_state.get(WIDTH_KEY, d.width))
        settings = ExportSettings(scale=scale, width=width)
        settings.check()
    except (TypeError, ValueError, LLDDError):
        return d
    return settings


def begin_report() -> None:
    """At the start of every run (app.py): nothing drawn yet."""
    st.session_state[REPORT_ITEMS] = {"figures": [], "tables": []}


def _collect(kind: str, name: str, item: Any) -> None:
    st.session_state.setdefault(REPORT_ITEMS, {"figures": [], "tables": []})[kind].append((name, item))


def chart(fig: go.Figure, key: str, name: str, **kwargs: Any) -> Any:
    """A plotly figure (already built with :func:`current_theme`), its export control below it, and a place in
    the report bundle under ``name``; returns what ``st.plotly_chart`` returns (a selection with ``on_select``).

    The report theme is drawn as built (``theme=None``), so the screen shows what an export saves; the dashboard
    theme in Streamlit's chart theme (light and dark mode).
    """
    settings = export_settings()
    event = st.plotly_chart(fig, width="stretch", key=key, config=toolbar_config(name, settings),
                            theme="streamlit" if current_theme().native else None, **kwargs)
    export_control(fig, key, name, settings)
    _collect("figures", name, fig)
    return event


def export_control(fig: go.Figure, key: str, name: str, settings: ExportSettings) -> None:
    """One small "Export figure" menu: PNG (at the export scale), SVG and PDF of ``fig``, drawn only on a click;
    where no browser can draw them, the one line that says why."""
    width, height = figure_size(fig, settings)
    with st.popover("Export figure", icon=":material/download:"):
        reason = unavailable()
        if reason is not None:
            st.caption(reason)
            return
        st.caption(f"{width}×{height} px layout · PNG at {settings.scale:g}× = "
                   f"{round(width * settings.scale)}×{round(height * settings.scale)} px · SVG and PDF vector, "
                   "same fonts")
        cols = st.columns(len(EXPORT_FORMATS))
        for col, fmt in zip(cols, EXPORT_FORMATS, strict=True):
            col.download_button(
                fmt.upper(), data=lambda fmt=fmt: figure_bytes(fig, fmt, settings),  # drawn when clicked
                file_name=f"{file_slug(name, 120)}.{fmt}", mime=MIME[fmt], on_click="ignore", key=f"{key}_export_{fmt}",
            )


# --- tables --------------------------------------------------------------------------------------------
def _cell_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def text_px(text: str) -> float:
    """The drawn width of ``text`` in the table font, estimated by character class."""
    width = 0.0
    for c in text:
        if c in NARROW:
            width += NARROW_PX
        elif c in SEMI:
            width += SEMI_PX
        elif c in WIDE:
            width += WIDE_PX
        elif c.isascii():
            width += UPPER_PX if c.isupper() else OTHER_PX
        else:
            width += NON_LATIN_PX if ord(c) > 0x2E80 or c == "\ufffd" else OTHER_PX
    return width


def column_widths(frame: pd.DataFrame, rows: int = 500) -> dict[str, int]:
    """Per column the pixels its widest cell (of the first ``rows``; floats as shown, 4 significant digits) or
    its header needs, within :data:`MIN_PX`..:data:`MAX_PX`."""
    widths = {}
    for col in frame.columns:
        cells = max((text_px(_cell_text(v)) for v in frame[col].head(rows).tolist()), default=0.0)
        need = max(cells + PAD_PX, text_px(str(col)) + HEADER_PAD_PX)
        widths[str(col)] = int(min(MAX_PX, max(MIN_PX, round(need))))
    return widths


def sized_config(frame: pd.DataFrame, column_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``column_config`` with every column given its content's width (:func:`column_widths`) unless it sets one."""
    config: dict[str, Any] = dict(column_config or {})
    for col, px in column_widths(frame).items():
        entry = config.get(col)
        if entry is None:
            config[col] = st.column_config.Column(width=px)
        elif isinstance(entry, str):
            config[col] = st.column_config.Column(entry, width=px)
        elif isinstance(entry, dict) and not entry.get("width"):
            config[col] = {**entry, "width": px}
    return config


def table(data: pd.DataFrame | Styler, key: str | None = None, name: str | None = None,
          column_config: dict[str, Any] | None = None, container: DeltaGenerator | None = None, **kwargs: Any) -> Any:
    """A table (a frame, or a :class:`Styler` of one) whose columns are as wide as their content, so none is cut
    (the grid scrolls sideways when they do not fit); kept for the report bundle under ``name`` (default ``key``)."""
    frame = data.data if isinstance(data, Styler) else data
    where = st if container is None else container
    shown = where.dataframe(data, hide_index=True, width="stretch", key=key,
                            column_config=sized_config(frame, column_config), **kwargs)
    if name or key:
        _collect("tables", name or str(key), frame)
    return shown


# --- the report bundle --------------------------------------------------------------------------------
def report_button(slot: DeltaGenerator, title: str, url_path: str) -> None:
    """In ``slot`` (the sidebar): "Download report (zip)" of what this run of view ``title`` drew, with its
    settings and permalink (:mod:`lldd_core.store.report`); the zip is built when clicked."""
    items = st.session_state.get(REPORT_ITEMS) or {"figures": [], "tables": []}
    if not items["figures"] and not items["tables"]:
        slot.caption("Report: the bundle of this view's figures, tables and settings is offered once it shows a result.")
        return
    params = link.current_params()
    spec = st.session_state.get("model_spec")
    content = ReportContent(
        title=title, figures=list(items["figures"]), tables=list(items["tables"]),
        settings={"url": link.url(params), "url_path": url_path, "query": params, "theme": current_theme().name,
                  "model": asdict(spec) if isinstance(spec, ModelSpec) else None},
    )
    st.session_state[REPORT_CONTENT] = content
    export = export_settings()
    with slot.container():
        st.download_button(
            "Download report (zip)", data=lambda: bundle(content, export), mime="application/zip", on_click="ignore",
            file_name=f"lldd_{file_slug(url_path or 'start')}_report.zip", key="report_bundle", icon=":material/folder_zip:",
            help=f"{len(content.figures)} figures (SVG, PNG at {export.scale:g}×, plotly JSON), {len(content.tables)} "
            "tables (CSV), report.html with both, and settings.json: the link that reopens this view, the model and "
            "the lldd version.",
        )


