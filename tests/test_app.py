"""The dashboard through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved gpt2).

Demo models are built with 5 training steps (seconds, not minutes) into temporary folders.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module
from lldd_core.demo import DEMO_CONFIGS, build_demo
from lldd_core.demo import build as build_module
from lldd_core.models import ModelSpec
from pages import _common
from pages._common import OTHER, BuildProgress, DemoBuild, follow_build

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


@pytest.fixture(scope="module")
def built_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo folder with the default demo model built (5 steps: a few seconds, barely trained)."""
    root = tmp_path_factory.mktemp("demo")
    build_demo("gpt2-small", steps=5, target=root / "gpt2-small")
    return root


@pytest.fixture()
def quick_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make first-use builds take 5 steps; returns the names trained, in order."""
    for name, cfg in DEMO_CONFIGS.items():  # every builder reads its budget from here
        monkeypatch.setitem(DEMO_CONFIGS, name, dataclasses.replace(cfg, steps=5))
    trained: list[str] = []
    train = build_module.train
    monkeypatch.setattr(build_module, "train", lambda cfg, **kw: trained.append(cfg.name) or train(cfg, **kw))
    return trained


@pytest.fixture()
def app(tiny_dirs, fresh_service, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app after its first run, with the tiny gpt2 as the sidebar's default model."""
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", str(tiny_dirs["gpt2"]))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    """No traceback, no error box, no warning (Streamlit also warns about misused widget state)."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def compute(at: AppTest) -> AppTest:
    return at.button(key="dj_compute").click().run()


def test_first_run_shows_form_and_sidebar(app: AppTest, tiny_dirs) -> None:
    # LLDD_DEFAULT_MODEL is a local path, not in the picker: "Other" with the path in the text field
    assert app.selectbox(key="sidebar_model_choice").value == OTHER
    assert app.text_input(key="sidebar_model").value == str(tiny_dirs["gpt2"])
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


def picker_labels(at: AppTest) -> list[str]:
    return list(at.selectbox(key="sidebar_model_choice").options)


def test_opens_on_the_built_demo_model(built_demo_dir, fresh_service, quick_builds, monkeypatch) -> None:
    """The README quick start: no settings, the default demo model already built, nothing downloaded."""
    monkeypatch.delenv("LLDD_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("LLDD_DEMO_DIR", str(built_demo_dir))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert_clean(at)
    assert at.selectbox(key="sidebar_model_choice").value == "demo:gpt2-small"
    labels = picker_labels(at)
    assert labels[:4] == ["demo:gpt2-small (default) ✓", "demo:gpt2-medium (not built)",
                          "demo:gpt2-large (not built)", "demo:llama-small (not built)"]
    assert labels[4] == "gpt2" and labels[-1] == OTHER
    assert not [t for t in at.text_input if t.key == "sidebar_model"]  # the free field only with "Other"
    assert any(c.value.startswith("Demo model (gpt2, 4 layers") for c in at.sidebar.caption)
    assert at.number_input(key="dj_layer_of_4").value == 4
    compute(at)
    assert_clean(at)
    shown = metrics(at)
    assert float(shown["Detached reconstruction error"]) < 1e-4  # float32
    assert any(c.value.startswith("`demo:gpt2-small` (GPT-2, float32)") for c in at.caption)
    assert quick_builds == []  # nothing was (re)built


def test_a_missing_demo_model_is_built_on_first_use(tmp_path, fresh_service, quick_builds, monkeypatch) -> None:
    monkeypatch.delenv("LLDD_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("LLDD_DEMO_DIR", str(tmp_path / "demo"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert_clean(at)
    assert quick_builds == ["gpt2-small"]
    assert at.success[0].value.startswith("Built `demo:gpt2-small` in ")
    assert "demo:gpt2-small (default) ✓" in picker_labels(at)  # the sidebar is redrawn after the build
    assert any(c.value.startswith("Demo model (gpt2, 4 layers") for c in at.sidebar.caption)
    # the "built on first use" explanation goes once the model is there
    assert [i.value for i in at.info] == ["Enter a prompt and press **Compute**."]
    assert at.number_input(key="dj_layer_of_4").value == 4  # and the page goes on as usual

    # Picking another unbuilt demo model builds it, and the choice survives its label changing.
    at.selectbox(key="sidebar_model_choice").set_value("demo:llama-small").run()
    assert_clean(at)
    assert quick_builds == ["gpt2-small", "llama-small"]
    assert "demo:llama-small ✓" in picker_labels(at)
    at.run()
    assert_clean(at)
    assert at.selectbox(key="sidebar_model_choice").value == "demo:llama-small"
    assert not at.success  # the "built" message shows once
    assert quick_builds == ["gpt2-small", "llama-small"]  # built once
    compute(at)
    assert_clean(at)
    assert any(c.value.startswith("`demo:llama-small` (Llama") for c in at.caption)


def test_other_takes_a_local_path(tiny_dirs, built_demo_dir, fresh_service, monkeypatch) -> None:
    monkeypatch.delenv("LLDD_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("LLDD_DEMO_DIR", str(built_demo_dir))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.selectbox(key="sidebar_model_choice").set_value(OTHER).run()
    assert_clean(at)  # an empty field gets a hint, not an error
    assert at.text_input(key="sidebar_model").value == ""
    assert "Enter a hub id or the path of a local model directory" in at.info[0].value
    assert all(b.key != "dj_compute" for b in at.button)
    at.text_input(key="sidebar_model").set_value(str(tiny_dirs["gpt2"])).run()
    assert_clean(at)
    compute(at)
    assert_clean(at)
    assert float(metrics(at)["Detached reconstruction error"]) < 1e-4
    # Back to a demo model and to "Other" again: the typed path is remembered.
    at.selectbox(key="sidebar_model_choice").set_value("demo:gpt2-small").run()
    at.selectbox(key="sidebar_model_choice").set_value(OTHER).run()
    assert at.text_input(key="sidebar_model").value == str(tiny_dirs["gpt2"])


def test_unknown_demo_model_lists_the_demo_models(fresh_service, quick_builds, monkeypatch) -> None:
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", "demo:nope")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert at.selectbox(key="sidebar_model_choice").value == OTHER
    assert at.text_input(key="sidebar_model").value == "demo:nope"
    assert len(at.error) == 1 and "There is no demo model 'nope'" in at.error[0].value
    assert "gpt2-small, gpt2-medium, gpt2-large, llama-small" in at.error[0].value
    assert quick_builds == []


def test_default_from_the_environment_is_marked(fresh_service, monkeypatch) -> None:
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", "gpt2")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception  # offline in tests: the page may say gpt2 cannot be fetched, but calmly
    assert at.selectbox(key="sidebar_model_choice").value == "gpt2"
    labels = picker_labels(at)
    assert "gpt2 (default)" in labels and labels[0] == "demo:gpt2-small (not built)"
    assert any("Hugging Face hub" in c.value for c in at.sidebar.caption)


class FakeBar:
    """Stands in for ``st.progress``; raises Streamlit's stop signal on call number ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[float, str]] = []
        self.stop_at = stop_at

    def progress(self, fraction: float, text: str) -> None:
        if len(self.calls) == self.stop_at:
            raise StopException()
        self.calls.append((fraction, text))


def test_a_build_outlives_a_rerun_request() -> None:
    """A widget click during a build must not throw minutes of training away."""
    bar, build = FakeBar(stop_at=1), DemoBuild(started=0.0)
    progress = BuildProgress(bar, build)
    progress(0.1, "Generating the corpus")
    progress(0.5, "Training")  # Streamlit stops this run here...
    progress(1.5, "Saving")  # ...but the build goes on, and later runs can follow it
    assert bar.calls == [(0.1, "Generating the corpus")]
    assert (build.fraction, build.message) == (1.0, "Saving")
    with pytest.raises(StopException):
        progress.resume()  # handed back to Streamlit once the build is done


@pytest.mark.parametrize("built", [True, False])
def test_a_later_run_follows_the_running_build(built, built_demo_dir, tmp_path, fresh_service, monkeypatch) -> None:
    monkeypatch.setenv("LLDD_DEMO_DIR", str(built_demo_dir if built else tmp_path))
    spec = ModelSpec("demo:gpt2-small")
    build = DemoBuild(started=time.perf_counter(), fraction=0.4, message="Training gpt2-small")
    _common._BUILDS[spec.model] = build
    try:
        threading.Timer(0.8, lambda: _common._BUILDS.pop(spec.model, None)).start()  # the build ends
        bar = FakeBar()
        failure = follow_build(spec, build, bar)
    finally:
        _common._BUILDS.pop(spec.model, None)
    assert bar.calls[0] == (0.4, "Training gpt2-small")
    assert failure is None if built else "did not finish" in failure
