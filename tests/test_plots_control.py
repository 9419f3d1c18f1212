"""Figures, tables and text highlighting of control and steering: hand-made results and a real tiny one."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from lldd_core.analysis.control import SCHEDULES, ControlResult, analyze_control
from lldd_core.concepts.catalog import load
from lldd_core.errors import InputError
from lldd_core.plots import control as pc
from lldd_core.steering.compare import SteeringResult
from tests.helpers import load as load_model


def _json(fig: go.Figure) -> dict:
    """The figure as the browser receives it (also proves it serializes)."""
    return json.loads(fig.to_json())


def _array(value: list | dict) -> np.ndarray:
    """A data array from figure JSON: a list (``None`` for NaN), or plotly's typed-array ``{dtype, bdata}`` form."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).astype(float)
    return np.array([np.nan if v is None else v for v in value], dtype=float)


def control_result() -> ControlResult:
    """Six schedules, three targets (given unsorted) over four layers (layer 0 without a direction);
    ``middle`` misses Δy = 2."""
    S, N, L = len(SCHEDULES), 3, 4
    rng = np.random.default_rng(0)
    sur = rng.normal(size=(S, N, L))
    sur[:, :, 0] = 0.0
    amp = 1.0 + rng.random((S, N))
    u = amp[:, :, None] * sur
    reached = np.ones((S, N), dtype=bool)
    reached[SCHEDULES.index("middle"), 2] = False
    energy = np.where(reached, (u**2).sum(-1), np.nan)
    return ControlResult(
        model="m", revision="r", dtype="float64", family="gpt2", n_params=10, dataset="d", source="builtin:d",
        classes=["a", "b"], order=2, complement="krylov", n_layers=L, layers=[1, 2, 3],
        split_sizes={"concept": 4, "operating": 2, "evaluation": 2}, targets=[1.0, -0.5, 2.0], names=list(SCHEDULES),
        tol=0.01, n_prompts=2, elapsed_s=0.1, gains=np.array([0.0, 0.5, 1.0, 2.0]), surrogate_u=sur, u=u,
        amplitude=amp, energy=energy, surrogate_energy=(sur**2).sum(-1), achieved=np.array([[1.0, -0.5, 2.0]] * S),
        reached=reached,
    )


def steering_result(method: str, steered: list[str], readout: bool = True, schedule: np.ndarray | None = None) -> SteeringResult:
    unsteered = [" The", " food", " was", " good", "."]
    return SteeringResult(
        model="m", revision="r", dtype="float32", family="gpt2", prompt="The <b>", method=method,
        params={"layers": [1], "strength": [2.5], "positions": "last"}, settings={
            "max_new_tokens": 5, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0},
        dataset="sentiment" if readout else "", unsteered="".join(unsteered), steered="".join(steered),
        unsteered_tokens=unsteered, steered_tokens=steered, elapsed_s=0.0,
        readout_unsteered=np.arange(len(unsteered), dtype=float) if readout else np.zeros(0),
        readout_steered=np.arange(len(steered), dtype=float) * 2.0 if readout else np.zeros(0),
        schedule=np.zeros(0) if schedule is None else schedule,
        classes=["positive", "negative"] if readout else [], class_readouts=[3.0, -3.0] if readout else [],
        steered_loop="", unsteered_loop="",
    )


# --- control ---------------------------------------------------------------------------------------
def test_parse_targets_accepts_lists_and_names_bad_entries() -> None:
    assert pc.parse_targets("0.5, 1, 2") == [0.5, 1.0, 2.0]
    assert pc.parse_targets(" -1;2  3e-1,2 ") == [-1.0, 2.0, 0.3]  # duplicates dropped
    for text, match in (("abc", "'abc' is not a number"), ("1, x", "'x' is not a number"), ("", "one or more"),
                        ("0", "non-zero"), ("nan", "finite"), (", ".join(map(str, range(1, 30))), "at most")):
        with pytest.raises(InputError, match=match):
            pc.parse_targets(text)


def test_energy_lines_are_the_energies_sorted_by_target() -> None:
    r = control_result()
    fig = _json(pc.energy_figure(r))
    assert [t["name"] for t in fig["data"]] == list(SCHEDULES)
    order = [1, 0, 2]  # Δy = -0.5, 1, 2
    for s, trace in enumerate(fig["data"]):
        np.testing.assert_allclose(_array(trace["x"]), [-0.5, 1.0, 2.0])
        np.testing.assert_allclose(_array(trace["y"]), r.energy[s, order])  # NaN where not reached
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert "1 not reached" in fig["layout"]["title"]["text"]


def test_relative_energy_is_the_ratio_to_llv() -> None:
    r = control_result()
    ratio = pc.relative_energy(r)
    np.testing.assert_allclose(ratio[0], 1.0)
    assert np.isnan(ratio[SCHEDULES.index("middle"), 2])
    fig = _json(pc.relative_energy_figure(r))
    order = [1, 0, 2]
    for s, trace in enumerate(fig["data"]):
        assert trace["type"] == "bar" and trace["name"] == SCHEDULES[s]
        assert trace["x"] == ["Δy = -0.5", "Δy = 1", "Δy = 2"]
        np.testing.assert_allclose(_array(trace["y"]), r.energy[s, order] / r.energy[0, order])
    assert fig["layout"]["yaxis"]["type"] == "log"


def test_schedule_bars_are_the_validated_or_surrogate_u() -> None:
    r = control_result()
    for surrogate in (False, True):
        fig = _json(pc.schedule_figure(r, 2, surrogate=surrogate))
        source = r.surrogate_u if surrogate else r.u
        for s, trace in enumerate(fig["data"]):
            np.testing.assert_allclose(_array(trace["x"]), range(4))
            np.testing.assert_allclose(_array(trace["y"]), source[s, 2])
    names = [t["name"] for t in _json(pc.schedule_figure(r, 2))["data"]]
    assert names[SCHEDULES.index("middle")] == "middle (not reached)" and names[0] == "llv"
    with pytest.raises(ValueError):
        pc.schedule_figure(r, 3)
    gains = _json(pc.gains_figure(r))["data"][0]
    np.testing.assert_allclose(_array(gains["y"]), r.gains)
    assert "no direction at layer 0" in _json(pc.gains_figure(r))["layout"]["title"]["text"]


def test_control_tables_hold_every_schedule_and_target() -> None:
    r = control_result()
    table = pc.control_table(r)
    assert len(table) == len(SCHEDULES) * 3
    row = table[(table["schedule"] == "middle") & (table["target Δy"] == 2.0)].iloc[0]
    assert row["reached"] == pc.NOT_REACHED and np.isnan(row["energy ‖u‖²"]) and np.isnan(row["energy / LLV"])
    np.testing.assert_allclose(table["energy ‖u‖²"].to_numpy(), r.energy.ravel())
    np.testing.assert_allclose(table["amplitude"].to_numpy(), r.amplitude.ravel())
    assert (table["layers used"] == 3).all()
    long = pc.schedules_table(r)
    assert len(long) == len(SCHEDULES) * 3 * 4
    np.testing.assert_allclose(long["u (validated)"].to_numpy(), r.u.ravel())


def test_figures_of_a_real_control_result(tiny_dirs) -> None:
    handle = load_model(tiny_dirs["gpt2"])
    r = analyze_control(handle, load("sentiment"), [1.0], order=4, n_eval=2, sizes=(6, 4, 3))
    fig = _json(pc.energy_figure(r))
    for s, trace in enumerate(fig["data"]):
        np.testing.assert_allclose(_array(trace["y"]), r.energy[s])
    np.testing.assert_allclose(_array(_json(pc.schedule_figure(r, 0))["data"][0]["y"]), r.u[0, 0])
    np.testing.assert_allclose(_array(_json(pc.gains_figure(r))["data"][0]["y"]), r.gains)
    assert len(pc.control_table(r)) == len(SCHEDULES)


# --- steering --------------------------------------------------------------------------------------
def test_diff_marks_on_handmade_tokens() -> None:
    a = [" The", " food", " was", " good", "."]
    assert pc.diff_marks(a, a) == ([False] * 5, [False] * 5)
    b = [" The", " food", " was", " terrible", " and", " cold", "."]
    marks_a, marks_b = pc.diff_marks(a, b)
    assert marks_a == [False, False, False, True, False]
    assert marks_b == [False, False, False, True, True, True, False]
    assert pc.differing(marks_b) == 3
    assert pc.diff_marks([], b) == ([], [True] * 7)
    assert pc.diff_marks(a, []) == ([True] * 5, [])


def test_tokens_html_marks_and_escapes() -> None:
    html = pc.tokens_html([" a", " <b>", "\n", " $x$", " *y*"], [False, True, False, False, True])
    assert html.count("<span") == 2 and pc.DIFF_COLOR in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # the token shows literally, it is not markup
    assert "<br>" in html and "\n" not in html  # never a blank line that would end the HTML block
    assert "$" not in html and "*" not in html  # no math, no emphasis
    assert html.startswith("<div") and html.endswith("</div>")
    assert "no new tokens" in pc.tokens_html([])
    assert pc.text_html("hi") == pc.tokens_html(["hi"])
    with pytest.raises(ValueError):
        pc.tokens_html(["a"], [True, False])


def test_readout_lines_are_the_result_arrays() -> None:
    add = steering_result("additive", [" The", " food", " was", " bad"], schedule=np.array([0.0, 2.5, 0.0]))
    jac = steering_result("jacobian", [" Golden", " Gate"])
    fig = _json(pc.readout_figure([add, jac]))
    assert [t["name"] for t in fig["data"]] == ["unsteered", "steered: additive", "steered: jacobian"]
    np.testing.assert_allclose(_array(fig["data"][0]["y"]), add.readout_unsteered)
    np.testing.assert_allclose(_array(fig["data"][1]["y"]), add.readout_steered)
    np.testing.assert_allclose(_array(fig["data"][2]["y"]), jac.readout_steered)
    np.testing.assert_allclose(_array(fig["data"][2]["x"]), [1, 2])
    assert fig["data"][1]["customdata"] == ["The", "food", "was", "bad"]
    assert pc.has_readout([add]) and not pc.has_readout([steering_result("jacobian", ["x"], readout=False)])

    assert pc.mean_readouts([add, jac]) == {"unsteered": 2.0, "additive": 3.0, "jacobian": 1.0}
    assert np.isnan(pc.mean_readouts([steering_result("jacobian", ["x"], readout=False)])["jacobian"])

    assert pc.has_schedule([add, jac]) and not pc.has_schedule([jac])
    bars = _json(pc.steering_schedule_figure([add, jac]))["data"]
    assert len(bars) == 1 and bars[0]["name"] == "additive"
    np.testing.assert_allclose(_array(bars[0]["y"]), add.schedule)

    params = pc.params_table([add])
    assert params.to_dict("records") == [
        {"method": "additive", "parameter": "layers", "value": "1"},
        {"method": "additive", "parameter": "strength", "value": "2.5"},
        {"method": "additive", "parameter": "positions", "value": "last"},
    ]
    assert pc.settings_line(add) == "5 new tokens at most · greedy"
    table = pc.readout_table([add, jac])
    assert table["text"].tolist() == ["unsteered"] * 5 + ["additive"] * 4 + ["jacobian"] * 2
    np.testing.assert_allclose(table["readout"].to_numpy(), [0, 1, 2, 3, 4, 0, 2, 4, 6, 0, 2])
    empty = pc.readout_table([steering_result("jacobian", ["x"], readout=False)])
    assert empty["readout"].isna().all() and isinstance(empty, pd.DataFrame)
