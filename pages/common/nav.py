"""How a view always runs under app.py, even when Streamlit's legacy multipage mode runs its file directly.

Streamlit 1.67 decides once per process, when the first session starts, that an app whose script sits next
to a ``pages/`` folder is a legacy multipage app (``PagesManager.uses_pages_directory``), and runs every
script run through that mode until some run calls ``st.navigation``. The mode lists the top-level
``pages/*.py`` as pages at ``/<file stem>`` and runs the requested file *instead of* app.py; a URL it does
not know gets a "Page not found" dialog. (``AppTest`` resets the flag, so every AppTest run starts in it.)
lldd makes that first run indistinguishable from any other:

- ``pages/`` holds the views only, each file named by its URL path, so the legacy mode knows exactly the
  views' URLs (``/jacobian`` works on the first request); helpers live in ``pages/common/``, which it does
  not scan (``/common``, ``/_ui`` and the like are never run).
- A view runs its body through :func:`run_view`: under app.py (:func:`inside_app`) it draws the view; run
  directly by the legacy mode it hands over to app.py, whose ``st.navigation`` ends the legacy mode and
  resolves the same URL to the same file, which then runs under app.py (page config, sidebar).
- Streamlit's own page list is hidden (``client.showSidebarNavigation = false`` in ``.streamlit/config.toml``,
  which also hides the legacy mode's list of files); :func:`view_links` draws the views' links instead.
"""

from __future__ import annotations

import contextlib
import runpy
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import streamlit as st
from streamlit.navigation.page import StreamlitPage
from streamlit.runtime.scriptrunner import get_script_run_ctx

#: The entry point every view runs under.
APP = Path(__file__).resolve().parents[2] / "app.py"

_RUN = threading.local()  # one script thread per session run: whether app.py is running the view now


@contextlib.contextmanager
def inside_app() -> Iterator[None]:
    """Mark the current script run as app.py running the selected view (``page.run()`` goes inside)."""
    before = getattr(_RUN, "inside", False)
    _RUN.inside = True
    try:
        yield
    finally:
        _RUN.inside = before


def run_view(main: Callable[[], None]) -> None:
    """A view file's last line: ``main()`` under app.py; otherwise run app.py in its place and stop this run.

    "Otherwise" is the legacy mode running ``pages/<url>.py`` directly: app.py's ``st.navigation`` then
    resolves ``/<url>`` to this file and runs it under :func:`inside_app`, so ``main`` runs exactly once.
    Imported outside any script run (a test reading the view's constants), it does nothing.
    """
    if get_script_run_ctx(suppress_warning=True) is None:
        return  # a plain import: no session to draw into, and app.py must not run in the importer's thread
    if getattr(_RUN, "inside", False):
        main()
        return
    runpy.run_path(str(APP), run_name="__main__")
    st.stop()  # app.py has drawn the whole page; nothing of the direct run may follow


def view_links(pages: Sequence[StreamlitPage]) -> None:
    """The views' links at the top of the sidebar (Streamlit's own page list is hidden, see above)."""
    for page in pages:
        st.sidebar.page_link(page)
