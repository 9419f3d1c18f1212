"""Paper-sized static export of plotly figures: PNG at a scale, SVG and PDF, drawn by one headless Chromium.

Plotly's static export is Kaleido (1.x), which drives a Chromium-based browser through ``choreographer``. The
browser is looked for as choreographer does (``$BROWSER_PATH``, then ``chrome``/``chromium``/… on ``PATH`` and
their usual install paths), then Debian's ``/usr/bin/chromium``. No browser, or one that fails, is an
:class:`ExportError` with one line that says what to do, never a traceback.

Size: ``width × height`` CSS pixels (the figure's own height when ``height`` is ``None``); a PNG has
``scale · width × scale · height`` pixels, SVG and PDF are vector at the same layout, so the three carry the same
text in the same font (the figure's ``layout.font.family``; the PDF embeds the glyphs it uses).

One browser serves the process (started on the first export, on a thread of its own with its own event loop,
closed at exit): an export costs ~0.3 s after the first (~3 s). Exports are serialized by a lock.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ..errors import LLDDError

#: The formats a figure exports to, and their MIME types.
FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
MIME: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
#: Where Debian (and the Dockerfile) installs Chromium: the last place looked.
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
#: Seconds one export may take before it counts as failed.
TIMEOUT_S = 60.0
#: Export scales offered (2–3× is print quality for a figure a column wide).
SCALES: tuple[float, ...] = (1.0, 2.0, 3.0)
#: Height of a figure that sets none.
DEFAULT_HEIGHT = 500


class ExportError(LLDDError):
    """A figure could not be exported (no browser, or the browser failed)."""


@dataclass(frozen=True)
class ExportSettings:
    """How figures are exported: ``scale`` (PNG pixels per CSS pixel), ``width`` and ``height`` in CSS pixels
    (``height=None``: the figure's own ``layout.height``, else :data:`DEFAULT_HEIGHT`)."""

    scale: float = 2.0
    width: int = 1000
    height: int | None = None

    def check(self) -> None:
        if not 0.5 <= float(self.scale) <= 4:
            raise ExportError(f"Export scale must lie in 0.5..4; got {self.scale}.")
        for name, value in (("width", self.width), ("height", self.height)):
            if value is not None and not 100 <= int(value) <= 4000:
                raise ExportError(f"Export {name} must lie in 100..4000 px; got {value}.")


def figure_size(fig: go.Figure, settings: ExportSettings) -> tuple[int, int]:
    """The exported layout size in CSS pixels: ``(width, height)``."""
    height = settings.height or fig.layout.height or DEFAULT_HEIGHT
    return int(settings.width), int(height)


def browser_path() -> str | None:
    """The browser Kaleido will drive: ``$BROWSER_PATH``, choreographer's search, then Debian's Chromium."""
    given = os.environ.get("BROWSER_PATH")
    if given:
        return given if Path(given).is_file() else None
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser()
    except Exception:  # noqa: BLE001  (an odd install: fall back to the paths we know)
        found = None
    if found:
        return str(found)
    for candidate in (shutil.which("chromium"), str(DEBIAN_CHROMIUM)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable() -> str | None:
    """Why figures cannot be exported here (one line), or ``None`` when they can."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "Figure export needs kaleido: pip install -r requirements.txt."
    if browser_path() is None:
        where = os.environ.get("BROWSER_PATH")
        if where:
            return f"Figure export: no browser at BROWSER_PATH={where!r}; point it at a Chrome or Chromium."
        return ("Figure export needs Chrome or Chromium: install one (Debian: apt-get install chromium) or set "
                "BROWSER_PATH to its executable.")
    return None


class _Renderer:
    """One Kaleido browser on its own thread and event loop; :meth:`render` hands it a figure and waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kaleido: Any = None
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        import kaleido

        path = browser_path()
        ready: Future[None] = Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                k = kaleido.Kaleido(n=1, mathjax=False, path=path)  # no MathJax: nothing fetched from a CDN
                loop.run_until_complete(k.open())
            except BaseException as err:  # noqa: BLE001  (reported to the caller below)
                ready.set_exception(err)
                loop.close()
                return
            self._kaleido = k
            ready.set_result(None)
            loop.run_forever()

        thread = threading.Thread(target=run, name="lldd-kaleido", daemon=True)
        thread.start()
        try:
            ready.result(timeout=TIMEOUT_S)
        except Exception as err:
            raise ExportError(f"Figure export: the browser at {path} did not start ({one_line(err)}).") from None
        self._loop, self._thread = loop, thread
        atexit.register(self.close)

    def render(self, fig: go.Figure, opts: dict[str, Any]) -> bytes:
        with self._lock:
            if self._loop is None:
                self._start()
            assert self._loop is not None
            future = asyncio.run_coroutine_threadsafe(self._kaleido.calc_fig(fig.to_dict(), opts=opts), self._loop)
            try:
                return bytes(future.result(timeout=TIMEOUT_S))
            except Exception as err:
                future.cancel()
                self._reset()  # a browser that failed once is not trusted with the next figure
                raise ExportError(f"Figure export failed ({one_line(err)}); try again.") from None

    def _reset(self) -> None:
        loop, k = self._loop, self._kaleido
        self._loop, self._kaleido, self._thread = None, None, None
        if loop is not None and k is not None:
            try:
                asyncio.run_coroutine_threadsafe(k.close(), loop).result(timeout=10)
            except Exception:  # noqa: BLE001  (closing a broken browser: nothing more to do)
                pass
            loop.call_soon_threadsafe(loop.stop)

    def close(self) -> None:
        with self._lock:
            self._reset()


_RENDERER = _Renderer()


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def figure_bytes(fig: go.Figure, fmt: str, settings: ExportSettings = ExportSettings()) -> bytes:
    """``fig`` as ``fmt`` (``"png"``, ``"svg"`` or ``"pdf"``) at ``settings``' size and scale.

    Raises :class:`ExportError` (one line) when no browser is available or the export fails.
    """
    if fmt not in FORMATS:
        raise ExportError(f"Figure format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    settings.check()
    reason = unavailable()
    if reason is not None:
        raise ExportError(reason)
    width, height = figure_size(fig, settings)
    # the scale only changes a bitmap's pixels; vector formats keep the layout size
    scale = float(settings.scale) if fmt == "png" else 1.0
    return _RENDERER.render(fig, {"format": fmt, "width": width, "height": height, "scale": scale})


def file_name(name: str, fmt: str) -> str:
    """``name.fmt`` (``name`` already file-name safe)."""
    return f"{name}.{fmt}"


def toolbar_config(name: str, settings: ExportSettings = ExportSettings()) -> dict[str, Any]:
    """Plotly config whose toolbar camera saves a PNG at ``settings``' scale under ``name`` (file-name safe)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("_")[:120] or "figure"
    return {"toImageButtonOptions": {"format": "png", "filename": safe, "scale": float(settings.scale)},
            "displaylogo": False}
