"""Shared helpers of the AppTest suites: the app's path, opening a page on a model, and checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


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
