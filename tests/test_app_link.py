"""Permalinks (pages/common/link.py) through AppTest: the URL's query string sets the widgets, the widgets
write the query string, an opened link shows a stored result without computing, and hostile strings fall
back to the defaults with one notice."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module
from tests.apptest import APP, assert_clean, metrics, open_page

PROMPT = "The cat sat on the"


def opened(params: dict[str, str | list[str]], page: str | None = None) -> AppTest:
    """A fresh session opened on a link to ``page`` (a pages/ file, the default view if ``None``) with ``params``.

    Switching before the first run works because every view's file is named by its URL (pages/common/nav.py).
    """
    at = AppTest.from_file(APP, default_timeout=120)
    for name, value in params.items():
        at.query_params[name] = value
    if page is not None:
        at.switch_page(page)
    return at.run()


def link_params(at: AppTest) -> dict[str, list[str]]:
    return {name: list(values) if isinstance(values, list) else [values] for name, values in at.query_params.items()}


def notice(at: AppTest) -> str:
    found = [w.value for w in at.sidebar.warning if w.value.startswith("Link: ")]
    assert len(found) == 1, [w.value for w in at.warning]
    return found[0]


@pytest.fixture()
def app(tiny_dirs, fresh_service, monkeypatch) -> AppTest:
    return open_page(None, tiny_dirs["gpt2"], monkeypatch)


def test_widgets_write_the_link_and_the_link_reopens_the_stored_result(app: AppTest, monkeypatch) -> None:
    app.text_area(key="dj_prompt").set_value(PROMPT)
    app.number_input(key="dj_layer_of_2").set_value(1)
    app.checkbox(key="dj_final_norm").uncheck()
    app.button(key="dj_compute").click().run()
    assert_clean(app)
    first = metrics(app)
    assert first["From cache"] == "no"
    params = link_params(app)
    assert params["dj_prompt"] == [PROMPT] and params["dj_layer"] == ["1"] and params["dj_final_norm"] == ["0"]
    assert params["sidebar_dtype"] == ["float32"] and "sidebar_trust_remote_code" not in params
    code = [c.value for c in app.sidebar.code]
    assert code and "dj_prompt=The+cat+sat+on+the" in code[-1]

    computed = []
    monkeypatch.setattr(service_module.Service, "handle", lambda *a, **k: computed.append(1) or pytest.fail("loaded"))
    again = opened(params)
    assert_clean(again)
    assert again.text_area(key="dj_prompt").value == PROMPT
    assert again.number_input(key="dj_layer_of_2").value == 1
    assert again.checkbox(key="dj_final_norm").value is False
    shown = metrics(again)
    assert shown["From cache"] == "yes" and not computed  # from the cache, nothing loaded
    assert {k: v for k, v in shown.items() if k != "From cache"} == {k: v for k, v in first.items() if k != "From cache"}
    assert link_params(again) == params  # the reopened view writes the same link


def test_a_link_to_an_uncached_result_fills_the_form_and_computes_nothing(app: AppTest, monkeypatch) -> None:
    params = link_params(app)
    params["dj_prompt"] = ["A prompt nobody computed"]
    monkeypatch.setattr(service_module.Service, "handle", lambda *a, **k: pytest.fail("a link must not compute"))
    at = opened(params)
    assert_clean(at)
    assert at.text_area(key="dj_prompt").value == "A prompt nobody computed"
    assert "From cache" not in metrics(at)
    assert any("press **Compute**" in i.value for i in at.info)


def test_changing_a_widget_updates_the_query_string(app: AppTest) -> None:
    assert link_params(app)["dj_final_norm"] == ["1"]
    app.checkbox(key="dj_final_norm").uncheck()
    app.button(key="dj_compute").click().run()
    assert link_params(app)["dj_final_norm"] == ["0"]
    app.selectbox(key="sidebar_dtype").set_value("float64").run()
    assert link_params(app)["sidebar_dtype"] == ["float64"]


def test_a_link_to_another_view_sets_its_widgets(tiny_dirs, fresh_service, monkeypatch) -> None:
    at = open_page("pages/graph.py", tiny_dirs["gpt2"], monkeypatch)
    at.slider(key="gr_node_threshold").set_value(0.25)
    at.number_input(key="gr_max_nodes").set_value(64)
    at.button(key="gr_compute").click().run()
    assert_clean(at)
    params = link_params(at)
    assert params["gr_node_threshold"] == ["0.25"] and params["gr_max_nodes"] == ["64"]
    again = opened(params, "pages/graph.py")
    assert_clean(again)
    assert again.slider(key="gr_node_threshold").value == 0.25 and again.number_input(key="gr_max_nodes").value == 64
    first, shown = metrics(at), metrics(again)
    assert shown.pop("From cache") == "yes" and first.pop("From cache") == "no"
    assert shown == first  # the stored graph, shown at once
    # a slider value out of its range would raise in Streamlit: the link's values give way to the defaults
    bad = opened({**params, "gr_node_threshold": "7"}, "pages/graph.py")
    assert not bad.exception, [e.value for e in bad.exception]
    assert "gr_node_threshold" in notice(bad) and bad.slider(key="gr_node_threshold").value != 7


@pytest.mark.parametrize("extra, name, why", [
    ({"dj_layer": "abc"}, "dj_layer", "not a whole number"),
    ({"dj_layer": "2.5"}, "dj_layer", "not a whole number"),
    ({"dj_layer": "99"}, "dj_layer", "not an allowed value"),
    ({"dj_final_norm": "maybe"}, "dj_final_norm", "not 1 or 0"),
    ({"sidebar_dtype": "evil"}, "sidebar_dtype", "not an allowed value"),
    ({"dj_prompt": "x" * 5000}, "dj_prompt", "longer than"),
    ({"dj_prompt": "a\x00b"}, "dj_prompt", "NUL"),
    ({"dj_layer": ["1", "2"]}, "dj_layer", "more than once"),
    ({"sidebar_trust_remote_code": "1"}, "sidebar_trust_remote_code", "not a setting of this view"),
    ({"__proto__": "x"}, "__proto__", "not a setting of this view"),
])
def test_hostile_query_strings_fall_back_to_defaults_with_one_notice(app: AppTest, extra, name, why) -> None:
    at = opened({**link_params(app), **extra})
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    line = notice(at)
    assert name in line and why in line and "\n" not in line
    assert at.number_input(key="dj_layer_of_2").value == 2  # the defaults
    assert at.selectbox(key="sidebar_dtype").value == "float32"
    assert at.checkbox(key="sidebar_trust_remote_code").value is False
    assert at.text_area(key="dj_prompt").value == "The Golden Gate Bridge is in"
    at.button(key="dj_compute").click().run()  # and the page works
    assert "Detached reconstruction error" in metrics(at)
