"""The Steering lab page through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved gpt2):
a sweep runs with progress, shows its answers, and hands its recommended setting to the Steering page."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest import assert_clean, open_page

SMALL = {"lb_concept": 6, "lb_operating": 4, "lb_evaluation": 3, "lb_n_prompts": 2, "lb_max_new": 4,
         "lb_target": 0.01, "lb_budget": 1e6}


@pytest.fixture()
def app(tiny_dirs, fresh_service, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The lab with the tiny gpt2 (2 layers), additive only at α = 0 and 100, tiny splits."""
    at = open_page("pages/lab.py", tiny_dirs["gpt2"], monkeypatch)
    for key, value in SMALL.items():
        at.number_input(key=key).set_value(value)
    at.multiselect(key="lb_methods").set_value(["additive"])
    at.run()
    at.text_input(key="lb_strengths_additive").set_value("0,100")
    return at.run()


def test_a_sweep_shows_its_answers_and_hands_over_to_steering(app: AppTest) -> None:
    app.button(key="lb_run").click().run()
    assert_clean(app)
    labels = {m.label: m.value for m in app.metric}
    assert float(labels["Probe held-out accuracy"]) >= 0.0
    assert labels["Cells new / cached"] == "3 / 0"  # the baseline and two cells
    table = app.dataframe[0].value
    assert list(table["method"]) == ["unsteered", "additive", "additive"]
    zero = table.iloc[1]
    for name in ("success", "perplexity", "repetition", "kl", "readout_shift"):
        assert zero[name] == table.iloc[0][name], name  # α = 0 is the unsteered text exactly
    assert len(app.get("plotly_chart")) == 1
    # the same sweep again: every cell from the cache
    app.button(key="lb_run").click().run()
    assert {m.label: m.value for m in app.metric}["Cells new / cached"] == "0 / 3"
    app.button(key="lb_send_additive").click().run()
    assert_clean(app)
    assert app.multiselect(key="st_methods").value == ["additive"]
    assert app.multiselect(key="st_add_layers_of_2").value == [1]
    assert app.number_input(key="st_add_strength").value in (0.0, 100.0)


def test_a_link_to_a_sweep_reopens_its_stored_cells_without_computing(app: AppTest, monkeypatch) -> None:
    import lldd_core.service as service_module
    from tests.test_app_link import link_params, opened

    app.button(key="lb_run").click().run()
    assert_clean(app)
    first = app.dataframe[0].value
    params = link_params(app)
    assert params["lb_methods"] == ["additive"] and params["lb_n_prompts"] == ["2"]
    # a reopened link replays the sweep from its cached cells: no model is loaded, no cell is generated
    monkeypatch.setattr(service_module.Service, "handle", lambda *a, **k: pytest.fail("a model was loaded"))
    again = opened(params, "pages/lab.py")
    assert_clean(again)
    assert again.multiselect(key="lb_methods").value == ["additive"]
    assert {m.label: m.value for m in again.metric}["Cells new / cached"] == "0 / 3"
    shown = again.dataframe[0].value
    assert list(shown["method"]) == list(first["method"])
    assert list(shown["success"]) == list(first["success"]) and list(shown["kl"]) == list(first["kl"])
