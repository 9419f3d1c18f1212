"""The Control page through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved gpt2).

Small splits (6/4/3 per class), 2 evaluation prompts and order 4 keep every computation to a few seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module
from lldd_core.analysis.control import SCHEDULES
from lldd_core.plots import control as plots_control
from tests.apptest import assert_clean, downloads, metrics, open_page

SMALL = {"ct_concept": 6, "ct_operating": 4, "ct_evaluation": 3, "ct_order_of_32": 4, "ct_n_eval": 2}
METRICS = ("Targets", "Reached", "Tolerance", "Evaluation prompts", "Compute time", "From cache")


@pytest.fixture()
def app(tiny_dirs, fresh_service, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The Control page with the tiny gpt2 as the sidebar's model."""
    at = open_page("pages/control.py", tiny_dirs["gpt2"], monkeypatch)
    return at


def compute(at: AppTest, targets: str = "0.5, 1") -> AppTest:
    """Submit the form with small settings (a form's values only count once submitted)."""
    for key, value in SMALL.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="ct_targets").set_value(targets)
    return at.button(key="ct_compute").click().run()


def test_compute_shows_schedules_and_then_hits_the_cache(app: AppTest) -> None:
    assert [t.value for t in app.title] == ["Control"]
    assert app.text_input(key="ct_targets").value == "0.5, 1, 2"
    assert app.number_input(key="ct_order_of_32").value == 32 and app.number_input(key="ct_n_eval").value == 16
    assert app.number_input(key="ct_tol").value == pytest.approx(1e-2)
    assert any("**llv** — least energy" in m.value for m in app.markdown)  # the schedules explained
    compute(app)
    assert_clean(app)
    assert app.status[0].label.startswith("Control schedules ready — Computed in")
    shown = metrics(app)
    assert tuple(shown) == METRICS
    assert shown["Targets"] == "2" and shown["From cache"] == "no" and shown["Evaluation prompts"] == "2"
    assert len(app.get("plotly_chart")) == 4  # energy, ratio to LLV, schedules over layers, gains
    assert len(downloads(app)) == 2

    spec = app.session_state["model_spec"]
    computed = service_module.get_service().control(spec, "sentiment", [0.5, 1.0], order=4, n_eval=2, sizes=(6, 4, 3))
    assert computed.cache_hit
    r = computed.result
    assert shown["Reached"] == f"{int(r.reached.sum())} / {len(SCHEDULES) * 2}"
    (frame,) = app.dataframe
    pd.testing.assert_frame_equal(frame.value, plots_control.control_table(r), check_dtype=False)

    app.selectbox(key="ct_target_of_2").set_value(1).run()  # the other target's schedules
    app.radio(key="ct_schedule_view").set_value("surrogate").run()
    assert_clean(app)

    compute(app)  # the same request again: from the disk cache
    assert_clean(app)
    assert metrics(app)["From cache"] == "yes"
    assert "Loaded from cache" in app.status[0].label


def test_default_splits_are_fitted_to_the_dataset_and_stated(app: AppTest) -> None:
    from lldd_core.concepts.catalog import load
    from lldd_core.concepts.splits import default_sizes

    for key in ("ct_order_of_32", "ct_n_eval"):  # small where it costs; the split sizes stay at their defaults
        app.number_input(key=key).set_value(SMALL[key])
    app.text_input(key="ct_targets").set_value("1")
    app.button(key="ct_compute").click().run()
    assert_clean(app)  # no "shrunk" box
    used = default_sizes(min(load("sentiment").class_counts()))
    line = (f"Split sizes: {used['concept']}/{used['operating']}/{used['evaluation']} per class "
            "(concept/operating/evaluation), the default 400/200/200 fitted to the dataset's smaller class.")
    assert line in [c.value for c in app.caption]
    assert not [i.value for i in app.info if i.value.startswith("Split sizes")]


@pytest.mark.parametrize(("targets", "message"), [("abc", "'abc' is not a number"), ("1, 0", "non-zero"),
                                                   ("", "one or more")])
def test_bad_targets_are_an_error_and_the_last_result_stays(app: AppTest, targets: str, message: str) -> None:
    if targets == "abc":  # one full round: a result first, then the bad input must leave it on screen
        compute(app, "1")
        assert_clean(app)
        good = metrics(app)
    compute(app, targets)
    assert not app.exception
    assert len(app.error) == 1 and message in app.error[0].value
    if targets == "abc":
        assert metrics(app) == good and len(app.get("plotly_chart")) == 4
    else:
        assert not app.metric
    compute(app, "1")  # the session keeps working
    assert_clean(app)
    assert np.isfinite(float(metrics(app)["Compute time"].split()[0]))
