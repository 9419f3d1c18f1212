"""The Gain curves page through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved gpt2).

Small splits (6/4/3 per class), 3 evaluation prompts and order 4 keep every computation under a second.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module
from lldd_core.analysis.ablation import EPS_VALUES
from lldd_core.concepts.catalog import list_datasets
from lldd_core.plots import gains as plots_gains
from pages.common.datasets import UPLOAD
from tests.apptest import assert_clean, downloads, metrics, open_page

SMALL = {"gn_concept": 6, "gn_operating": 4, "gn_evaluation": 3, "gn_order_of_32": 4, "gn_n_eval": 3}
AGREEMENT = ("Mean Spearman", "Mean Pearson", "Spearman of mean curves", "Pearson of mean curves", "From cache")
BEST = ("Best layer: predicted", "Best layer: measured", "Best layer: exact", "Compute time", "Evaluation prompts")


@pytest.fixture()
def app(tiny_dirs, fresh_service, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The Gain curves page with the tiny gpt2 as the sidebar's model."""
    at = open_page("pages/gains.py", tiny_dirs["gpt2"], monkeypatch)
    return at


def compute(at: AppTest) -> AppTest:
    """Submit the form with small settings (a form's values only count once submitted)."""
    for key, value in SMALL.items():
        at.number_input(key=key).set_value(value)
    return at.button(key="gn_compute").click().run()


def upload(at: AppTest, name: str, rows: list[tuple[str, object]]) -> AppTest:
    at.radio(key="gn_ds_source").set_value(UPLOAD).run()
    content = "text,label\n" + "".join(f"{text},{label}\n" for text, label in rows)
    return at.file_uploader(key="gn_ds_file").set_value((name, content.encode(), "text/csv")).run()


def test_compute_shows_curves_tables_and_then_hits_the_cache(app: AppTest) -> None:
    assert [t.value for t in app.title] == ["Gain curves"]
    assert app.selectbox(key="gn_ds_name").value == "sentiment"
    assert app.number_input(key="gn_order_of_32").max == 32  # the tiny model's hidden size
    assert [i.value for i in app.info] == ["Choose a concept dataset and press **Compute gain curves**."]
    compute(app)
    assert_clean(app)
    assert app.status[0].label.startswith("Gain curves ready — Computed in")
    shown = metrics(app)
    assert tuple(shown)[:10] == AGREEMENT + BEST
    assert shown["From cache"] == "no" and shown["Evaluation prompts"] == "3"
    assert len(app.get("plotly_chart")) == 4  # mean curves, direction norms, one prompt, agreement histogram
    assert any(c.value == "Split sizes: 6/4/3 per class (concept/operating/evaluation)." for c in app.caption)
    assert any("order 4 · krylov · ε 0.1 · prompt mode" in c.value for c in app.caption)

    spec = app.session_state["model_spec"]
    result = service_module.get_service().gains(spec, "sentiment", order=4, n_eval=3, sizes=(6, 4, 3)).result
    assert shown["Mean Spearman"] == plots_gains.format_corr(result.mean_spearman)
    assert shown["Best layer: measured"] == str(result.best_layer_measured)
    (frame,) = app.dataframe
    pd.testing.assert_frame_equal(frame.value, plots_gains.prompt_table(result), check_dtype=False)
    assert len(downloads(app)) == 2  # per-prompt table, all curves

    app.selectbox(key="gn_prompt_of_3").set_value(2).run()  # another prompt's curves
    assert_clean(app)
    assert metrics(app)["Prompt Pearson"] == plots_gains.format_corr(float(result.pearson[2]))

    compute(app)  # the same request again: from the disk cache
    assert_clean(app)
    assert metrics(app)["From cache"] == "yes"
    assert "Loaded from cache" in app.status[0].label


def test_default_splits_are_fitted_to_the_dataset_and_stated(app: AppTest) -> None:
    """No built-in dataset holds the paper's 800 per class: the default sizes are fitted to it, without a warning."""
    from lldd_core.concepts.catalog import load
    from lldd_core.concepts.splits import default_sizes

    assert [app.number_input(key=f"gn_{s}").value for s in ("concept", "operating", "evaluation")] == [400, 200, 200]
    for key in ("gn_order_of_32", "gn_n_eval"):  # small where it costs; the split sizes stay at their defaults
        app.number_input(key=key).set_value(SMALL[key])
    app.button(key="gn_compute").click().run()
    assert_clean(app)
    assert not [i.value for i in app.info if i.value.startswith("Split sizes")]
    used = default_sizes(min(load("sentiment").class_counts()))
    spec = app.session_state["model_spec"]
    result = service_module.get_service().cached_gains(spec, "sentiment", order=4, n_eval=3)
    assert result is not None and result.split_sizes == used  # the result's stamp says what was used
    line = (f"Split sizes: {used['concept']}/{used['operating']}/{used['evaluation']} per class "
            "(concept/operating/evaluation), the default 400/200/200 fitted to the dataset's smaller class.")
    assert line in [c.value for c in app.caption]


def test_ablation_tab_sweeps_eps_with_the_submitted_settings(app: AppTest) -> None:
    compute(app)
    assert_clean(app)
    (caption,) = [c.value for c in app.caption if c.value.startswith("Sweeps ε over")]
    assert "order 4 · krylov · ε 0.1 · 3 evaluation prompts · prompt mode · splits 6/4/3 per class" in caption
    app.button(key="gn_ablate_eps").click().run()
    assert_clean(app)
    assert [s.label.split(" — ")[0] for s in app.status] == ["Ablation over ε ready"]
    assert len(app.dataframe) == 2 and len(app.get("plotly_chart")) == 5  # the main result (4 charts) stays above the ablation
    table = app.dataframe[1].value
    assert table["ε"].tolist() == list(EPS_VALUES)
    assert table["main setting"].tolist() == [v == 0.1 for v in EPS_VALUES]
    spec = app.session_state["model_spec"]
    ablation = service_module.get_service().gains_ablation(spec, "sentiment", "eps", order=4, n_eval=3,
                                                           sizes=(6, 4, 3)).result
    pd.testing.assert_frame_equal(table, plots_gains.ablation_table(ablation), check_dtype=False)
    app.run()  # a rerun keeps both results
    assert_clean(app)
    assert len(app.dataframe) == 2 and app.dataframe[1].value["ε"].tolist() == list(EPS_VALUES)


def test_user_errors_show_and_keep_the_last_result(app: AppTest) -> None:
    compute(app)
    assert_clean(app)
    good = metrics(app)

    upload(app, "one_class.csv", [(f"text {i}", 1) for i in range(8)])
    assert not app.exception
    assert len(app.error) == 1 and "every row has label '1'" in app.error[0].value
    assert app.button(key="gn_compute").disabled
    assert metrics(app) == good  # the last good result stays on screen

    upload(app, "tiny.csv", [(f"text {i}", i % 2) for i in range(6)])  # 3 per class: too few to split
    assert not app.exception
    assert len(app.error) == 1 and "each class needs at least 4" in app.error[0].value

    rows = [(f"good text {i}", "yes") for i in range(4)] + [(f"bad text {i}", "no") for i in range(4)]
    upload(app, "small.csv", rows)
    assert_clean(app)
    assert any(c.value.startswith("`small` (upload:small.csv): 8 rows") for c in app.caption)
    compute(app)  # 4 per class: the splits shrink to the minimum, and the page says so
    assert_clean(app)
    (shrunk,) = [i.value for i in app.info if i.value.startswith("Split sizes:")]
    assert "2/1/1 per class" in shrunk and "shrunk from 6/4/3" in shrunk
    assert metrics(app)["Evaluation prompts"] == "2"
    assert any("dataset `small` (yes vs no; upload:small.csv)" in c.value for c in app.caption)


def test_an_unavailable_hub_dataset_is_an_error_not_a_crash(app: AppTest) -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        pytest.skip("needs HF_HUB_OFFLINE=1 (tests/conftest.py sets it), or the test would download a dataset")
    missing = [r.name for r in list_datasets() if not r.available_offline]
    if not missing:
        pytest.skip("every hub dataset is in the local datasets cache")
    app.selectbox(key="gn_ds_name").set_value(missing[0]).run()
    assert_clean(app)
    assert any("Not in the local datasets cache" in c.value for c in app.caption)
    compute(app)
    assert not app.exception
    assert len(app.error) == 1 and "not available offline" in app.error[0].value
    assert app.status[0].label == "Could not compute the gain curves"
    app.button(key="gn_ablate_complement").click().run()  # the ablations report it the same way
    assert not app.exception
    assert len(app.error) == 1 and "not available offline" in app.error[0].value
    assert not app.metric and not app.dataframe
    app.selectbox(key="gn_ds_name").set_value("sentiment").run()
    compute(app)  # the session keeps working
    assert_clean(app)
    assert np.isfinite(float(metrics(app)["Compute time"].split()[0]))


def test_status_reports_the_whole_requests_wall_time(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status label counts everything the user waited for (here a slow model resolution), not only the
    analysis's own compute time."""
    import re
    import time

    service = service_module.get_service()
    info = service.info

    def slow_info(*args, **kwargs):
        time.sleep(0.6)
        return info(*args, **kwargs)

    monkeypatch.setattr(service, "info", slow_info)
    compute(app)
    assert_clean(app)
    label = app.status[0].label
    wall = float(re.search(r"Computed in ([0-9.]+) s", label).group(1))
    result = app.session_state["gains.last"].result
    assert wall >= 0.6 and wall > result.elapsed_s  # the 0.6 s before the analysis started are counted
    compute(app)  # a cache hit says so, with its own (short) time
    assert re.fullmatch(r"Gain curves ready — Loaded from cache in [0-9.]+ s", app.status[0].label)
