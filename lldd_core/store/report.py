"""The report bundle: one view's figures, tables and the exact settings that reproduce it, as one zip.

No streamlit here: a page hands over what it drew (:class:`ReportContent`) and gets the zip's bytes back. Layout::

    settings.json      the view, its permalink (URL and query parameters), the model, theme, export size and the
                       package version (``lldd_core.__version__``: cached results are keyed by it)
    report.html        one self-contained page: the settings, every figure embedded (SVG, as an image, so nothing
                       in it runs) and every table
    figures/<n>.svg    each figure as vector, .png at the export scale, .json as plotly JSON (re-plot it with
                       ``plotly.io.from_json``)
    tables/<n>.csv     each table through :func:`lldd_core.store.export.csv_text` (formula-safe)

A figure that cannot be drawn (no browser for the export) is kept as its plotly JSON, and ``settings.json`` and
the HTML say why; the bundle itself never fails for it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._version import __version__
from ..errors import LLDDError
from .export import csv_text

if TYPE_CHECKING:  # plotly figures only as a type; the default renderer is imported when it is needed
    import plotly.graph_objects as go

    from ..plots.export import ExportSettings

#: Formats each figure is saved in (besides its JSON), in the order the HTML prefers them.
FIGURE_FORMATS: tuple[str, ...] = ("svg", "png")
SETTINGS_FILE, HTML_FILE = "settings.json", "report.html"
#: Rows of a table the HTML shows (the CSV holds every row).
HTML_ROWS = 200

Render = Callable[["go.Figure", str, "ExportSettings"], bytes]


@dataclass(frozen=True)
class ReportContent:
    """What one view showed: ``figures`` and ``tables`` as (name, object) in page order, the view's ``title``
    and ``settings`` (JSON-able: the permalink's query, the model, …)."""

    title: str
    figures: Sequence[tuple[str, go.Figure]] = ()
    tables: Sequence[tuple[str, pd.DataFrame]] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)


def safe_name(name: str, taken: set[str]) -> str:
    """``name`` as a file name (letters, digits, ``._-``), unique among ``taken`` (which it joins)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "item"
    base = base[:80]
    out, n = base, 2
    while out in taken:
        out, n = f"{base}_{n}", n + 1
    taken.add(out)
    return out


def settings_document(content: ReportContent, export: ExportSettings, problems: Sequence[str] = ()) -> dict[str, Any]:
    """``settings.json``'s content: the view's settings plus the version, export size and any figure problem."""
    return {
        "view": content.title,
        **dict(content.settings),
        "export": {"scale": export.scale, "width": export.width, "height": export.height},
        "lldd_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "figure_problems": list(problems),
    }


def read_settings(bundle: bytes) -> dict[str, Any]:
    """``settings.json`` of a bundle (what reopens the view: its ``query`` is the permalink's query string)."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as z:
        return json.loads(z.read(SETTINGS_FILE))


def _render_default(fig: go.Figure, fmt: str, export: ExportSettings) -> bytes:
    from ..plots.export import figure_bytes

    return figure_bytes(fig, fmt, export)


def _table_html(table: pd.DataFrame) -> str:
    shown = table.head(HTML_ROWS)
    more = f"<p class='note'>First {HTML_ROWS} of {len(table)} rows; the CSV has all.</p>" if len(table) > HTML_ROWS else ""
    return shown.to_html(index=False, escape=True, na_rep="", border=0, classes="table") + more


STYLE = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #111; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
img { max-width: 100%; border: 1px solid #ddd; }
table.table { border-collapse: collapse; font-size: 0.85em; } .table td, .table th { border: 1px solid #ccc;
padding: 2px 6px; text-align: left; vertical-align: top; } pre { background: #f5f5f5; padding: 1em;
white-space: pre-wrap; word-break: break-all; } .note { color: #555; font-size: 0.85em; }
"""


def report_html(content: ReportContent, document: Mapping[str, Any], figures: Sequence[tuple[str, str, bytes | None]],
                tables: Sequence[tuple[str, str]]) -> str:
    """The self-contained HTML: title, settings, link, figures (``(title, file stem, svg or None)``) and tables
    (``(title, file stem)`` of ``content.tables``, same order)."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(content.title)} · lldd</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(content.title)}</h1>"]
    url = document.get("url")
    if url:
        parts.append(f"<p>Reopen this view (its result shows from the cache): <a href='{e(str(url), quote=True)}'>"
                     f"{e(str(url))}</a></p>")
    parts.append(f"<p class='note'>lldd {e(__version__)} · {e(str(document.get('created', '')))}</p>")
    for title, stem, svg in figures:
        parts.append(f"<h2>{e(title)}</h2>")
        if svg is None:
            parts.append(f"<p class='note'>Not drawn here; figures/{e(stem)}.json holds it as plotly JSON.</p>")
        else:  # as an <img>: an SVG shown as an image runs no script
            data = base64.b64encode(svg).decode("ascii")
            parts.append(f"<img alt='{e(title, quote=True)}' src='data:image/svg+xml;base64,{data}'>")
    for (title, stem), (_, table) in zip(tables, content.tables, strict=True):
        parts.append(f"<h2>{e(title)}</h2><p class='note'>tables/{e(stem)}.csv</p>{_table_html(table)}")
    parts.append("<h2>Settings</h2><pre>" + e(json.dumps(document, indent=2, ensure_ascii=False)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def bundle(content: ReportContent, export: ExportSettings | None = None, render: Render | None = None,
           formats: Sequence[str] = FIGURE_FORMATS) -> bytes:
    """The zip of ``content`` (module doc). ``render(fig, fmt, export)`` draws a figure (default:
    :func:`lldd_core.plots.export.figure_bytes`); a figure it cannot draw stays as JSON, with the reason noted."""
    from ..plots.export import ExportSettings

    export = export or ExportSettings()
    render = render or _render_default
    taken: set[str] = set()
    problems: list[str] = []
    files: list[tuple[str, bytes]] = []
    drawn: list[tuple[str, str, bytes | None]] = []
    for title, fig in content.figures:
        stem = safe_name(title, taken)
        files.append((f"figures/{stem}.json", fig.to_json().encode()))
        svg = None
        for fmt in formats:
            try:
                data = render(fig, fmt, export)
            except LLDDError as err:
                problems.append(f"{stem}.{fmt}: {err}")
                break  # the next format would fail the same way
            files.append((f"figures/{stem}.{fmt}", data))
            if fmt == "svg":
                svg = data
        drawn.append((title, stem, svg))
    table_stems = []
    for title, table in content.tables:
        stem = safe_name(title, taken)
        files.append((f"tables/{stem}.csv", csv_text(table).encode()))
        table_stems.append((title, stem))
    document = settings_document(content, export, problems)
    files.insert(0, (SETTINGS_FILE, json.dumps(document, indent=2, ensure_ascii=False).encode()))
    files.insert(1, (HTML_FILE, report_html(content, document, drawn, table_stems).encode()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            z.writestr(name, data)
    return out.getvalue()
