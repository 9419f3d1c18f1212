"""Hostile inputs through the dashboard (AppTest, tiny gpt2: 2 layers, width 32, 64 positions).

Number inputs keep their values inside the ranges of :mod:`lldd_core.ranges` by themselves (Streamlit
refuses what lies outside ``min_value``/``max_value``); what still reaches the service is free text (a
prompt, a steering phrase, a list of targets), a combination no single widget bounds (prompt plus new
tokens past the context) and the environment. Each gets exactly one one-line ``st.error``, no exception,
and the page works again on the next run with good input; a result cached before (``survivor``) is still
a hit with identical numbers afterwards.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest import assert_clean, metrics, open_page
from tests.hostile import assert_one_line_error

CONTROL_SMALL = {"ct_concept": 6, "ct_operating": 4, "ct_evaluation": 3, "ct_order_of_32": 4, "ct_n_eval": 2}
STEER_SMALL = {"st_max_new_of_63": 4, "st_concept": 6, "st_operating": 4, "st_evaluation": 3}
LONG = "The Golden Gate Bridge is in San Francisco and " * 12  # past the 64 positions


@pytest.fixture(autouse=True)
def _survives(survivor):
    return survivor


@pytest.fixture()
def page(tiny_dirs, fresh_service, monkeypatch):
    """``page(name)``: the app opened on ``pages/<name>.py`` with the tiny gpt2 as the sidebar's model."""
    return lambda name: open_page(f"pages/{name}.py", tiny_dirs["gpt2"], monkeypatch)


# --- Detached Jacobian and Layers: prompts -------------------------------------------------------------


def jacobian(at: AppTest, prompt: str) -> AppTest:
    at.text_area(key="dj_prompt").set_value(prompt)
    return at.button(key="dj_compute").click().run()


@pytest.mark.parametrize("prompt, message", [("   ", "The prompt is empty"), ("\n\t\n", "The prompt is empty"),
                                             (LONG, "handles at most 64: shorten it")])
def test_jacobian_page_refuses_a_bad_prompt_and_recovers(page, prompt, message):
    at = jacobian(page("jacobian"), prompt)
    assert message in assert_one_line_error(at)
    jacobian(at, "The cat says")
    assert_clean(at)
    assert "Detached reconstruction error" in metrics(at)


def test_garbage_jacobian_limit_in_the_environment_is_one_error(page, monkeypatch):
    at = jacobian(page("jacobian"), "The cat says")
    assert_clean(at)
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "nan")
    at.selectbox(key="dj_spec_method").set_value("full")
    at.button(key="dj_spec_compute").click().run()
    assert assert_one_line_error(at).startswith("LLDD_MAX_JACOBIAN_GB='nan' is not valid")
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "8")
    at.button(key="dj_spec_compute").click().run()
    assert_clean(at)
    assert metrics(at)["Spectrum method"] == "full"


def layers(at: AppTest, prompt: str, sites: list[str] | None = None) -> AppTest:
    at.text_area(key="ly_prompt").set_value(prompt)
    at.number_input(key="ly_k_of_32").set_value(2)
    if sites is not None:
        at.multiselect(key="ly_sites").set_value(sites)
    return at.button(key="ly_compute").click().run()


@pytest.mark.parametrize("prompt, sites, message", [(LONG, None, "handles at most 64"),
                                                    ("The cat says", [], "Choose at least one site")])
def test_layers_page_refuses_and_recovers(page, prompt, sites, message):
    at = layers(page("layers"), prompt, sites)
    assert message in assert_one_line_error(at)
    layers(at, "The cat says", ["block"])
    assert_clean(at)


# --- Attribution graph: prompt and target token -----------------------------------------------------------


def graph(at: AppTest, prompt: str, target: str = "") -> AppTest:
    at.text_area(key="gr_prompt").set_value(prompt)
    at.text_input(key="gr_target").set_value(target)
    at.number_input(key="gr_max_nodes").set_value(32)
    return at.button(key="gr_compute").click().run()


@pytest.mark.parametrize("prompt, target, message", [("   ", "", "The prompt is empty"),
                                                     (LONG, "", "handles at most 64"),
                                                     ("The cat says", " two words", "one token")])
def test_graph_page_refuses_and_recovers(page, prompt, target, message):
    at = graph(page("graph"), prompt, target)
    assert message in assert_one_line_error(at)
    graph(at, "The cat says")
    assert_clean(at)
    assert "Replacement score" in metrics(at)


# --- Control: the targets are free text ------------------------------------------------------------------


def control(at: AppTest, targets: str) -> AppTest:
    for key, value in CONTROL_SMALL.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="ct_targets").set_value(targets)
    return at.button(key="ct_compute").click().run()


@pytest.mark.parametrize("targets, message", [
    ("1,nan", "finite and non-zero"),
    ("inf", "finite and non-zero"),
    ("0", "finite and non-zero"),
    ("", "Give one or more target shifts"),
    ("1, two", "'two' is not a number"),
    ("1e9", "must be a non-zero number in [-10000, 10000]; got 1e+09"),
])
def test_control_page_refuses_bad_targets_and_recovers(page, targets, message):
    at = control(page("control"), targets)
    assert message in assert_one_line_error(at)
    control(at, "1")
    assert_clean(at)
    assert metrics(at)["Targets"] == "1"


# --- Steering: phrases, prompts and the context ------------------------------------------------------------


def steer(at: AppTest, prompt: str, methods: list[str], **values) -> AppTest:
    at.multiselect(key="st_methods").set_value(methods).run()
    for key, value in {**STEER_SMALL, **values}.items():
        widget = at.text_input(key=key) if key == "st_jac_text" else at.number_input(key=key)
        widget.set_value(value)
    at.text_area(key="st_prompt").set_value(prompt)
    return at.button(key="st_generate").click().run()


@pytest.mark.parametrize("prompt, methods, values, message", [
    ("The movie was", ["jacobian"], {"st_jac_text": ""}, "needs a steering phrase"),
    ("The movie was", ["jacobian"], {"st_jac_text": "   "}, "needs a steering phrase"),
    ("   ", ["additive"], {}, "The prompt is empty"),
    (LONG[:150], ["additive"], {"st_max_new_of_63": 63}, "new tokens were asked for, but"),
])
def test_steering_page_refuses_and_recovers(page, prompt, methods, values, message):
    at = steer(page("steering"), prompt, methods, **values)
    assert message in assert_one_line_error(at)
    steer(at, "The movie was", methods, **({"st_jac_text": "The Golden Gate"} if "jacobian" in methods else {}))
    assert_clean(at)
    assert any(s.label.endswith("steering ready") or " ready — " in s.label for s in at.status)


def test_max_new_tokens_follows_the_models_context(page):
    at = page("steering")
    widget = at.number_input(key="st_max_new_of_63")  # 64 positions: at least one prompt token beside them
    assert widget.max == 63 and widget.min == 1 and "64 positions" in widget.help


# --- Steering lab: free-text strengths and classifier path ----------------------------------------------


LAB_SMALL = {"lb_concept": 6, "lb_operating": 4, "lb_evaluation": 3, "lb_n_prompts": 1, "lb_max_new": 2}


def test_lab_page_refuses_bad_strengths_and_a_missing_classifier_and_recovers(page, tmp_path):
    at = page("lab")
    for key, value in LAB_SMALL.items():
        at.number_input(key=key).set_value(value)
    at.multiselect(key="lb_methods").set_value(["additive"]).run()
    at.text_input(key="lb_strengths_additive").set_value("0,abc").run()
    assert any("empty entry" in i.value or "must be" in i.value for i in at.info), [i.value for i in at.info]
    assert at.button(key="lb_run").disabled
    at.text_input(key="lb_strengths_additive").set_value("0,4")
    at.text_input(key="lb_classifier").set_value(str(tmp_path / "no-such-classifier")).run()
    at.button(key="lb_run").click().run()
    assert "Could not load the classifier" in assert_one_line_error(at)
    at.text_input(key="lb_classifier").set_value("")
    at.button(key="lb_run").click().run()
    assert_clean(at)
    assert "Cells new / cached" in metrics(at)
