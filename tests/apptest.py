"""Shared helpers of the AppTest suites: the app's path, opening a page on a model, and checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def views() -> dict[str, tuple[str, str]]:
    """app.py's views, read from its ``st.Page(...)`` calls: the URL path each answers at (``""`` for the
    default view, which a hidden alias also serves at its file's name) -> (file, title)."""
    found = {}
    for node in ast.walk(ast.parse(Path(APP).read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page":
            kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            found["" if kw.get("default") else kw["url_path"]] = (ast.literal_eval(node.args[0]), kw["title"])
    return found


def assert_clean(at: AppTest) -> None:
    """No traceback, no error box, no warning (Streamlit also warns about misused widget state)."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def open_page(page: str | None, model: Path | str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app after its first run with ``model`` as the sidebar's default, switched to ``page`` (a pages/ file)."""
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", str(model))
    at = AppTest.from_file(APP, default_timeout=120).run()
    if page is not None:
        at.switch_page(page).run()
    assert_clean(at)
    return at


#: Labels of the buttons in each figure's export control (pages/common/ui.py).
EXPORT_LABELS = frozenset({"PNG", "SVG", "PDF"})


def downloads(at: AppTest) -> list:
    """The view's own download buttons: every one in the main area but the figures' export buttons."""
    return [b for b in at.main.get("download_button") if b.label not in EXPORT_LABELS]
