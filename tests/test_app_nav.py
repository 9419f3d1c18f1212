"""Navigation: pages/ holds the views only, each named by its URL, and a view run directly hands over to app.py.

Streamlit's legacy pages/ mode (the first run of a server process, and every AppTest run) serves the
top-level ``pages/*.py`` at ``/<file stem>`` and runs them instead of app.py (see :mod:`pages.common.nav`).
The real-browser side (a fresh server's first seconds) is in tests/test_browser.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.apptest import APP, assert_clean, open_page, views

PAGES_DIR = Path(APP).parent / "pages"


def test_pages_folder_holds_exactly_the_views_each_named_by_its_url() -> None:
    found = views()
    files = {file for file, _ in found.values()}
    assert len(files) == 8 and "" in found
    top_level = {p.name for p in PAGES_DIR.glob("*.py")} - {"__init__.py"}
    assert top_level == {Path(file).name for file in files}  # no helper a legacy run could serve
    for file in files:
        assert Path(file).stem in found, file  # both modes resolve /<file stem> to the same file
        assert found[Path(file).stem][0] == file and Path(file).parent.name == "pages"


@pytest.mark.parametrize("url", [url for url in views() if url])
def test_every_view_runs_under_app_py_also_when_run_directly(url, tiny_dirs, fresh_service, monkeypatch) -> None:
    """AppTest's switch_page starts in the legacy mode, which runs ``pages/<url>.py`` itself: the view must
    hand over, so app.py's sidebar (model picker, the views' links) is drawn and the view appears once."""
    file, title = views()[url]
    at = open_page(file, tiny_dirs["gpt2"], monkeypatch)
    assert_clean(at)
    assert at.selectbox(key="sidebar_model_choice") is not None  # app.py ran: its sidebar is there
    assert [t.value for t in at.title] == [title]  # the view drew itself once, not twice
    links = at.sidebar.get("page_link")
    assert [link.proto.label for link in links] == [t for url, (_, t) in views().items() if url != "jacobian"]
