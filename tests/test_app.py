"""The dashboard through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved gpt2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module

APP = str(Path(__file__).resolve().parent.parent / "app.py")
METRICS = (
    "Detached reconstruction error",
    "Ordinary reconstruction error",
    "Detached vs normal output",
    "‖y‖",
    "Bias channel ‖b‖",
    "Ordinary ‖b‖",
    "Compute time",
    "From cache",
)


@pytest.fixture()
def fresh_service(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A new process-wide service on this test's empty cache directory (AppTest runs in-process)."""
    monkeypatch.setattr(service_module, "_SERVICE", None)
    yield
    if service_module._SERVICE is not None:
        service_module._SERVICE.cache.close()


@pytest.fixture()
def app(tiny_dirs, fresh_service, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app after its first run, with the tiny gpt2 as the sidebar's default model."""
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", str(tiny_dirs["gpt2"]))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    """No traceback and no error box."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def compute(at: AppTest) -> AppTest:
    return at.button(key="dj_compute").click().run()


def test_first_run_shows_form_and_sidebar(app: AppTest) -> None:
    assert app.text_area(key="dj_prompt").value == "The Golden Gate Bridge is in"
    layer = app.number_input(key="dj_layer_of_2")
    assert (layer.value, layer.min, layer.max) == (2, 1, 2)
    assert app.selectbox(key="sidebar_dtype").value == "float32"
    assert app.selectbox(key="sidebar_device").value == "auto"
    assert app.checkbox(key="sidebar_trust_remote_code").value is False
    assert app.checkbox(key="sidebar_allow_pickle").value is False
    assert not app.metric  # nothing computed yet
    assert any("0 results" in c.value for c in app.caption)
    # A rerun must run app.py again, not only the page (see the url_path comment in app.py).
    app.run()
    assert_clean(app)
    assert app.selectbox(key="sidebar_dtype").value == "float32"
    assert app.text_area(key="dj_prompt").value == "The Golden Gate Bridge is in"


def test_compute_reconstructs_exactly_and_then_hits_the_cache(app: AppTest) -> None:
    app.selectbox(key="sidebar_dtype").set_value("float64").run()
    compute(app)
    assert_clean(app)
    shown = metrics(app)
    assert tuple(shown) == METRICS
    assert float(shown["Detached reconstruction error"]) < 1e-12  # float64: rounding level
    assert float(shown["Ordinary reconstruction error"]) > 1e-3
    assert float(shown["Detached vs normal output"]) < 1e-12
    assert shown["From cache"] == "no"
    assert len(app.get("plotly_chart")) == 3
    assert app.status[0].label.startswith("Detached Jacobian ready")
    assert len(app.get("download_button")) == 1

    app.run()  # a plain rerun (any widget change) keeps the last result on screen
    assert_clean(app)
    assert metrics(app) == shown

    compute(app)
    assert_clean(app)
    again = metrics(app)
    assert again["From cache"] == "yes"
    assert again["Detached reconstruction error"] == shown["Detached reconstruction error"]
    assert "Loaded from cache" in app.status[0].label


def test_layer_and_final_norm_reach_the_service(app: AppTest) -> None:
    app.number_input(key="dj_layer_of_2").set_value(1)
    app.checkbox(key="dj_final_norm").set_value(False)
    compute(app)
    assert_clean(app)
    assert any("layer 1/2" in c.value and "final norm off" in c.value for c in app.caption)
    assert float(metrics(app)["Detached reconstruction error"]) < 1e-4  # float32 default


def test_empty_prompt_is_an_error_not_a_crash(app: AppTest) -> None:
    app.text_area(key="dj_prompt").set_value("   ")
    compute(app)
    assert not app.exception
    assert [e.value for e in app.error] == ["The prompt is empty: type some text to analyse."]
    assert app.status[0].label == "Could not compute the detached Jacobian"
    assert not app.metric
    app.text_area(key="dj_prompt").set_value("The cat says")  # the session keeps working
    compute(app)
    assert_clean(app)
    assert metrics(app)["From cache"] == "no"


def test_missing_model_path_is_an_error(tiny_dirs, fresh_service, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", str(tmp_path / "no-such-model"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert len(at.error) == 1 and "No model directory" in at.error[0].value
    assert all(b.key != "dj_compute" for b in at.button)  # no form without a model


def test_switching_to_a_bad_model_keeps_the_last_result(app: AppTest, tmp_path: Path) -> None:
    compute(app)
    assert_clean(app)
    app.text_input(key="sidebar_model").set_value(str(tmp_path / "missing")).run()
    assert not app.exception
    assert "No model directory" in app.error[0].value
    assert metrics(app)["From cache"] == "no"  # the earlier result is still shown


def test_clear_cache_button_empties_the_cache(app: AppTest) -> None:
    compute(app)
    assert any("1 result (jacobian 1)" in c.value for c in app.caption)
    app.button(key="sidebar_clear_cache").click().run()
    assert_clean(app)
    assert any("0 results" in c.value for c in app.caption)
    compute(app)
    assert metrics(app)["From cache"] == "no"
