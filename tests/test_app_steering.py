"""The Steering page through Streamlit's AppTest (app.py with st.navigation, real service, tiny saved gpt2).

Small splits (6/4/3 per class) and 6 new tokens keep every generation well under a second.
"""

from __future__ import annotations

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import lldd_core.service as service_module
from lldd_core.plots import control as plots_control
from lldd_core.steering.examples import examples
from lldd_core.steering.generate import CallbackStreamer, GenerationSettings
from lldd_core.steering.methods.additive import AdditiveParams
from lldd_core.steering.methods.registry import get
from tests.apptest import downloads, open_page

SMALL = {"st_max_new_of_63": 6, "st_concept": 6, "st_operating": 4, "st_evaluation": 3}
PROMPT = examples("sentiment")[0]  # the page's default prompt: a negative review, begun
SIZES = (6, 4, 3)
SETTINGS = GenerationSettings(max_new_tokens=6)


@pytest.fixture()
def app(tiny_dirs, fresh_service, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The Steering page with the tiny gpt2 (2 layers) as the sidebar's model and small settings."""
    at = open_page("pages/steering.py", tiny_dirs["gpt2"], monkeypatch)
    for key, value in SMALL.items():
        at.number_input(key=key).set_value(value)
    return at.run()


def assert_clean_but_loops(at: AppTest) -> None:
    """No traceback, no error; the only warnings are loop warnings (the tiny random model's texts loop)."""
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert all(w.value.startswith("The steered text loops") for w in at.warning), [w.value for w in at.warning]


def generate(at: AppTest) -> AppTest:
    return at.button(key="st_generate").click().run()


def html_blocks(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith('<div class="lldd-text"')]


def statuses(at: AppTest) -> list[str]:
    return [s.label for s in at.status]


@pytest.fixture()
def streamed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every text a :class:`CallbackStreamer` hands the page, as (streamer id, text so far)."""
    seen: list[tuple[int, str]] = []
    init = CallbackStreamer.__init__

    def spy(self, tokenizer, on_text):
        init(self, tokenizer, lambda text: (seen.append((id(self), text)), on_text(text)))

    monkeypatch.setattr(CallbackStreamer, "__init__", spy)
    return seen


def test_additive_generates_beside_the_unsteered_text_and_then_hits_the_cache(
        app: AppTest, streamed: list[tuple[int, str]]) -> None:
    assert [t.value for t in app.title] == ["Steering"]
    assert app.multiselect(key="st_methods").value == ["additive"]
    assert app.text_area(key="st_prompt").value == PROMPT
    assert app.multiselect(key="st_add_layers_of_2").value == []  # default: the layer of largest gain
    assert app.number_input(key="st_add_strength").value is None  # default: calibrated
    assert any(get("additive").help in m.value for m in app.markdown)
    generate(app)
    assert_clean_but_loops(app)
    assert len(statuses(app)) == 1 and statuses(app)[0].startswith("Additive steering ready — Computed in")
    streams = list(dict.fromkeys(i for i, _ in streamed))
    assert len(streams) == 2  # the unsteered text, then the steered one, token by token
    texts = [[t for i, t in streamed if i == s] for s in streams]

    spec = app.session_state["model_spec"]
    computed = service_module.get_service().steer(spec, PROMPT, "additive", AdditiveParams(), dataset="sentiment",
                                                  settings=SETTINGS, sizes=SIZES)
    assert computed.cache_hit
    r = computed.result
    _, marks = plots_control.diff_marks(r.unsteered_tokens, r.steered_tokens)
    assert html_blocks(app) == [plots_control.tokens_html(r.unsteered_tokens),
                                plots_control.tokens_html(r.steered_tokens, marks)]
    assert len(r.steered_tokens) == 6
    assert [t[-1] for t in texts] == [r.unsteered, r.steered] and all(len(t) >= 6 for t in texts)
    assert any(c.value.startswith(f"{plots_control.differing(marks)} of 6 tokens differ") for c in app.caption)
    assert r.split_sizes == {"concept": 6, "operating": 4, "evaluation": 3}  # the concept's splits as used
    assert any(c.value.endswith("dataset `sentiment`, splits 6/4/3 per class (concept/operating/evaluation)")
               for c in app.caption)
    assert len(app.get("plotly_chart")) == 2  # the readout along the tokens, the schedule over layers
    means = {m.label: m.value for m in app.metric}
    assert means == {f"Mean readout: {k}": f"{v:.4g}" for k, v in plots_control.mean_readouts([r]).items()}
    (params,) = app.dataframe
    pd.testing.assert_frame_equal(params.value, plots_control.params_table([r]), check_dtype=False)
    assert len(downloads(app)) == 1

    streamed.clear()
    generate(app)  # the same request again: from the disk cache, nothing streamed
    assert_clean_but_loops(app)
    assert not streamed
    assert statuses(app)[0].startswith("Additive steering ready — Loaded from cache")
    assert any("· from cache" in c.value for c in app.caption)
    assert html_blocks(app)[1] == plots_control.tokens_html(r.steered_tokens, marks)


def test_additive_and_jacobian_side_by_side_and_jacobian_without_a_dataset(app: AppTest) -> None:
    app.multiselect(key="st_methods").set_value(["additive", "jacobian"]).run()
    assert app.text_input(key="st_jac_text").value == "The Golden Gate"
    assert app.number_input(key="st_jac_layer_of_2").value == 1
    app.number_input(key="st_add_strength").set_value(4.0)
    app.radio(key="st_add_positions").set_value("all")
    app.number_input(key="st_jac_lam_blend").set_value(0.3)
    generate(app)
    assert_clean_but_loops(app)
    assert [s.split(" — ")[0] for s in statuses(app)] == ["Additive steering ready", "Jacobian steering ready"]
    assert len(html_blocks(app)) == 3  # unsteered, additive, jacobian
    readout = app.get("plotly_chart")[0].proto.spec
    assert "steered: additive" in readout and "steered: jacobian" in readout
    table = app.dataframe[0].value
    assert set(table["method"]) == {"additive", "jacobian"}
    assert "The Golden Gate" in table["value"].tolist()

    app.multiselect(key="st_methods").set_value(["jacobian"]).run()
    app.checkbox(key="st_use_dataset").uncheck()
    app.radio(key="st_jac_variant").set_value("additive").run()
    generate(app)
    assert_clean_but_loops(app)
    assert len(html_blocks(app)) == 2
    assert any(i.value.startswith("No concept readout") for i in app.info)
    assert not app.get("plotly_chart")  # no readout, and no per-layer schedule for the Jacobian method


def test_user_errors_show_and_keep_the_last_result(app: AppTest) -> None:
    generate(app)
    assert_clean_but_loops(app)
    good = html_blocks(app)

    app.text_area(key="st_prompt").set_value("   ")
    generate(app)
    assert not app.exception
    assert len(app.error) == 1 and "prompt is empty" in app.error[0].value
    assert html_blocks(app) == good  # the last good result stays on screen

    app.text_area(key="st_prompt").set_value(PROMPT)
    app.multiselect(key="st_methods").set_value(["jacobian"]).run()
    app.text_input(key="st_jac_text").set_value("")
    generate(app)
    assert not app.exception
    assert len(app.error) == 1 and "steering phrase" in app.error[0].value
    assert html_blocks(app) == good

    app.multiselect(key="st_methods").set_value([]).run()
    assert app.button(key="st_generate").disabled
    assert any("at least one method" in i.value for i in app.info)
    assert_clean_but_loops(app)
    assert html_blocks(app) == good


def test_llv_and_lqr_controls_offer_the_calibrated_defaults_and_state_their_rule(app: AppTest) -> None:
    """The page's LLV and LQR controls start at the methods' defaults (the calibrated recipe) and say where they
    steer; a run's parameters are those the CLI's defaults give."""
    from lldd_core.steering.methods.lqr import LQRParams
    from pages.steering import LLV_RULE, LQR_RULE

    app.multiselect(key="st_methods").set_value(["llv", "lqr"]).run()
    assert app.number_input(key="st_llv_dy").value is None  # calibrated
    d = LQRParams()
    assert [app.number_input(key=k).value for k in ("st_lqr_q", "st_lqr_r", "st_lqr_qf", "st_lqr_lam")] == \
        [d.q, d.r, d.qf, 1.0]
    assert (app.radio(key="st_lqr_setpoint").value, app.radio(key="st_lqr_at").value) == (d.setpoint, d.at)
    captions = [c.value for c in app.caption]
    assert LLV_RULE in captions and LQR_RULE in captions
    generate(app)
    assert_clean_but_loops(app)
    spec = app.session_state["model_spec"]
    lqr = service_module.get_service().steer(spec, PROMPT, "lqr", LQRParams(lam=1.0), dataset="sentiment",
                                             settings=SETTINGS, sizes=SIZES)
    assert lqr.cache_hit  # the page ran the defaults
    assert (lqr.result.params["setpoint"], lqr.result.params["at"]) == ("class-mean", "input")
