"""The dashboard through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved gpt2).

Demo models are built with 5 training steps (seconds, not minutes) into temporary folders.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module
from lldd_core.demo import DEMO_CONFIGS, build_demo
from lldd_core.demo import build as build_module
from lldd_core.forward.views import SITES
from lldd_core.models.loading import ModelSpec
from lldd_core.plots import spectra as plots_spectra
from pages.common import build as _build
from pages.common.build import BuildProgress, DemoBuild, follow_build
from pages.common.sidebar import OTHER
from tests.apptest import APP, assert_clean, downloads, metrics, open_page

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
    at = open_page(None, tiny_dirs["gpt2"], monkeypatch)
    return at


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
    assert app.selectbox(key="sidebar_quantization").value == "none"
    assert not app.metric  # nothing computed yet
    assert any("0 results" in c.value for c in app.caption)
    # the memory the model will need is shown before it is loaded
    assert any(c.value.startswith("Memory: ≈") and "available" in c.value for c in app.sidebar.caption)
    assert not app.sidebar.warning
    app.selectbox(key="sidebar_device").set_value("map").run()
    assert app.text_input(key="sidebar_max_memory").value == ""
    app.text_input(key="sidebar_max_memory").set_value("cpu=1000").run()  # far too small: offload, not an error
    assert_clean(app)
    app.selectbox(key="sidebar_device").set_value("auto").run()
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
    assert len(downloads(app)) == 1

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
    assert any("output x_1 (layer 1 of 0..2)" in c.value and "final norm off" in c.value for c in app.caption)
    assert float(metrics(app)["Detached reconstruction error"]) < 1e-4  # float32 default


def assert_empty_prompt_refused(app: AppTest, key: str, run: Callable[[AppTest], object], label: str) -> None:
    """A blank prompt: one error line and the status box saying so, no traceback."""
    app.text_area(key=key).set_value("   ")
    run(app)
    assert not app.exception
    assert [e.value for e in app.error] == ["The prompt is empty: type some text to analyse."]
    assert app.status[0].label == label


def test_empty_prompt_is_an_error_not_a_crash(app: AppTest) -> None:
    assert_empty_prompt_refused(app, "dj_prompt", compute, "Could not compute the detached Jacobian")
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
    _build._BUILDS[spec.model] = build
    try:
        threading.Timer(0.8, lambda: _build._BUILDS.pop(spec.model, None)).start()  # the build ends
        bar = FakeBar()
        failure = follow_build(spec, build, bar)
    finally:
        _build._BUILDS.pop(spec.model, None)
    assert bar.calls[0] == (0.4, "Training gpt2-small")
    assert failure is None if built else "did not finish" in failure


# --- spectra on the Detached Jacobian page -------------------------------------------------------------
def compute_spectra(at: AppTest) -> AppTest:
    return at.button(key="dj_spec_compute").click().run()


def table_with(at: AppTest, column: str):
    """The first dataframe on the page that has ``column``."""
    (frame, *_) = [d for d in at.dataframe if column in d.value.columns]
    return frame


def test_spectra_section_decodes_tokens_and_flips_sign(app: AppTest) -> None:
    app.selectbox(key="sidebar_dtype").set_value("float64").run()
    compute(app)
    assert_clean(app)
    assert "Spectra and token decodings" in [h.value for h in app.subheader]
    assert app.info[-1].value.startswith("Press **Compute spectra**")
    app.number_input(key="dj_spec_k_of_32").set_value(4)
    app.number_input(key="dj_spec_n").set_value(3)
    app.selectbox(key="dj_spec_method").set_value("full")
    compute_spectra(app)
    assert_clean(app)
    assert app.status[-1].label.startswith("Spectra ready")
    shown = metrics(app)
    assert shown["Spectrum method"] == "full" and shown["Spectra from cache"] == "no"
    assert float(shown["Max residual"]) < 1e-8
    # the very result the page shows (a cache hit now): the table is its last token's decoded pairs
    result = service_module.get_service().spectrum(
        app.session_state["model_spec"], "The Golden Gate Bridge is in", k=4, n_decode=3, method="full"
    ).result
    assert shown["Next token"] == plots_spectra.display_token(result.next_token)
    T = len(result.tokens)
    assert app.selectbox(key=f"dj_spec_token_of_{T}_{T}").value == T - 1  # the last token by default
    frame = table_with(app, "U tokens (output, logits)")
    pd.testing.assert_frame_equal(frame.value, plots_spectra.spectrum_table(result, T - 1), check_dtype=False)
    assert len(plots_spectra.cell_tokens(frame.value.iloc[0, 3])) == 3
    colors = plots_spectra.highlight_colors([plots_spectra.display_token(result.next_token)])
    cells = list(frame.value.iloc[:, 3]) + list(frame.value.iloc[:, 4])
    hit = any(plots_spectra.matched_word(c, colors) for c in cells)
    assert (plots_spectra.HIGHLIGHT_COLORS[0] in frame.proto.arrow_data.styler.styles) == hit
    # stable ranks per token, rows and columns (full path), their norms; every table downloadable
    ranks = table_with(app, "σ_1").value
    assert list(ranks["stable rank"]) == pytest.approx(result.stable_rank)
    assert list(table_with(app, "row").value["row"]) == list(result.top_rows[-1])
    assert list(table_with(app, "column").value["column"]) == list(result.top_cols[-1])
    assert len(app.get("plotly_chart")) == 4
    assert len(downloads(app)) == 5  # the JSON result and four CSV tables

    app.toggle(key="dj_spec_negative").set_value(True).run()
    assert_clean(app)
    flipped = table_with(app, "−U tokens (output, logits)").value
    pd.testing.assert_frame_equal(flipped, plots_spectra.spectrum_table(result, T - 1, negative=True), check_dtype=False)
    assert list(flipped.iloc[:, 3]) != list(frame.value.iloc[:, 3])

    app.selectbox(key=f"dj_spec_token_of_{T}_{T}").set_value(1).run()  # another token
    assert_clean(app)
    assert table_with(app, "−U tokens (output, logits)").value.iloc[0, 1] == pytest.approx(result.singular_values[1, 0])

    app.selectbox(key="sidebar_export_scale").set_value(3.0).run()  # the toolbar's camera saves PNG at 3×
    configs = [json.loads(chart.proto.config) for chart in app.get("plotly_chart")]
    assert {(c["toImageButtonOptions"]["format"], c["toImageButtonOptions"]["scale"]) for c in configs} == {("png", 3.0)}


def test_spectra_errors_and_stale_requests(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    compute(app)
    app.number_input(key="dj_spec_k_of_32").set_value(1000)  # the widget keeps k within the hidden size (32)
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "1e-9")  # no full Jacobian fits
    app.selectbox(key="dj_spec_method").set_value("full")
    compute_spectra(app)
    assert not app.exception
    assert len(app.error) == 1 and "LLDD_MAX_JACOBIAN_GB): use the streamed method" in app.error[0].value
    assert app.status[-1].label == "Could not compute the spectra"
    assert app.number_input(key="dj_spec_k_of_32").value <= 32
    monkeypatch.delenv("LLDD_MAX_JACOBIAN_GB")
    assert metrics(app)["From cache"] == "no"  # the Jacobian result is still shown
    app.number_input(key="dj_spec_k_of_32").set_value(3)
    app.selectbox(key="dj_spec_method").set_value("matrix_free")
    compute_spectra(app)
    assert_clean(app)
    assert metrics(app)["Spectrum method"] == "matrix_free"
    assert "± se" in table_with(app, "σ_1").value.columns  # an estimate, with its standard error
    assert not [d for d in app.dataframe if "row" in d.value.columns]  # rows and columns need the full path
    # a new request: the spectra of the old one are not shown under it
    app.text_area(key="dj_prompt").set_value("The cat says")
    compute(app)
    assert_clean(app)
    assert "Spectrum method" not in metrics(app)
    assert app.info[-1].value.startswith("Press **Compute spectra**")


def test_a_prompt_past_the_jacobian_limit_streams_and_its_spectra_take_positions(
        app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "1e-5")  # 10 kB: no J of this prompt (T * 32 * 32 * 4 bytes) fits
    app.selectbox(key="sidebar_dtype").set_value("float64").run()
    compute(app)
    assert_clean(app)
    assert any("streamed row block by row block" in i.value for i in app.info)
    assert float(metrics(app)["Detached reconstruction error"]) < 1e-10  # exact without ever forming J
    spec, prompt = app.session_state["model_spec"], "The Golden Gate Bridge is in"
    jac = service_module.get_service().jacobian(spec, prompt).result
    assert jac.streamed and jac.singular_values.shape[1] == 16
    app.number_input(key="dj_spec_k_of_32").set_value(3)
    app.text_input(key="dj_spec_positions").set_value("0, -1")
    compute_spectra(app)  # auto: the full J does not fit, so it streams
    assert_clean(app)
    shown = metrics(app)
    assert shown["Spectrum method"].startswith("streamed (") and "pass" in shown["Spectrum method"]
    result = service_module.get_service().spectrum(spec, prompt, k=3, positions="0, -1").result
    T = len(result.tokens)
    assert result.rows == [0, T - 1] and result.method == "streamed"
    token = app.selectbox(key=f"dj_spec_token_of_{T}_2")
    assert list(token.options) == [plots_spectra.column_label(i, result.tokens[i]) for i in (0, T - 1)]
    assert list(table_with(app, "σ_1").value["position"]) == [0, T - 1]
    assert list(table_with(app, "row").value["row"]) == list(result.top_rows[-1])  # rows need no formed J now
    token.set_value(0).run()
    assert_clean(app)
    pd.testing.assert_frame_equal(table_with(app, "U tokens (output, logits)").value,
                                  plots_spectra.spectrum_table(result, 0), check_dtype=False)
    app.text_input(key="dj_spec_positions").set_value("0, 99")  # outside the prompt: a message, not a traceback
    compute_spectra(app)
    assert not app.exception and len(app.error) == 1 and "99" in app.error[0].value


# --- the Layers page ----------------------------------------------------------------------------------
def open_layers(at: AppTest) -> AppTest:
    at.switch_page("pages/layers.py").run()
    assert_clean(at)
    return at


def compute_layers(at: AppTest) -> AppTest:
    return at.button(key="ly_compute").click().run()


def test_layers_page_emergence_table_and_highlights(app: AppTest) -> None:
    open_layers(app)
    assert [t.value for t in app.title] == ["Layers"]
    assert app.multiselect(key="ly_sites").value == list(SITES)
    assert app.checkbox(key="ly_lens").value is True
    compute_layers(app)
    assert_clean(app)
    assert app.status[0].label.startswith("Layer views ready")
    assert metrics(app)["From cache"] == "no"
    assert len(app.get("plotly_chart")) == 3  # heatmap, stable ranks, emergence
    assert len(downloads(app)) == 2  # emergence table and stable ranks
    result = service_module.get_service().layers(app.session_state["model_spec"], "The Golden Gate Bridge is in").result
    (frame,) = app.dataframe
    pd.testing.assert_frame_equal(frame.value, plots_spectra.emergence_table(result, "cumulative"), check_dtype=False)
    assert len(frame.value) == result.n_layers and frame.value.columns[0] == "layer l (x_0 → x_l)"

    words = [t for c in frame.value.iloc[:, 1:].to_numpy().ravel() for t in plots_spectra.cell_tokens(c) if t.isalnum()]
    word = words[0]  # a token that occurs in the table
    app.text_input(key="ly_highlight").set_value(f"{word}, zzqxnotaword").run()
    assert_clean(app)
    (legend,) = [m.value for m in app.markdown if m.value.startswith("Highlighted:")]
    assert plots_spectra.HIGHLIGHT_COLORS[0] in legend and plots_spectra.HIGHLIGHT_COLORS[1] in legend
    assert "zzqxnotaword</span> 0 cells" in legend and f"{word}</span> 0 cells" not in legend
    styles = app.dataframe[0].proto.arrow_data.styler.styles
    assert plots_spectra.HIGHLIGHT_COLORS[0] in styles and plots_spectra.HIGHLIGHT_COLORS[1] not in styles

    app.selectbox(key="ly_site").set_value("mlp")
    app.radio(key="ly_space").set_value("v")
    app.selectbox(key="ly_vector_of_3").set_value(1).run()
    assert_clean(app)
    expected = plots_spectra.emergence_table(result, "mlp", vector=1, space="v")
    pd.testing.assert_frame_equal(app.dataframe[0].value, expected, check_dtype=False)


def test_layers_page_errors_keep_the_session(app: AppTest) -> None:
    open_layers(app)
    assert_empty_prompt_refused(app, "ly_prompt", compute_layers, "Could not compute the layer views")
    assert not app.dataframe
    app.text_area(key="ly_prompt").set_value("The cat says")
    app.multiselect(key="ly_sites").set_value([])
    compute_layers(app)
    assert not app.exception
    assert len(app.error) == 1 and "Choose at least one site" in app.error[0].value
    app.multiselect(key="ly_sites").set_value(["mlp"])
    app.checkbox(key="ly_lens").set_value(False)
    compute_layers(app)  # the session keeps working
    assert_clean(app)
    assert any("views: mlp" in c.value and "logit lens off" in c.value for c in app.caption)
    assert app.selectbox(key="ly_site").options == ["MLP term of block b (into x_{b+1})"]
    app.text_area(key="ly_prompt").set_value("")
    compute_layers(app)
    assert not app.exception and len(app.error) == 1
    assert len(app.dataframe) == 1  # the last good result stays on screen
