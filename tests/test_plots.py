"""Figure builders on a real JacobianResult of a tiny saved gpt2 (float64, CPU)."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import plotly.graph_objects as go
import pytest

from lldd_core.analysis.jacobian import JacobianResult, analyze_jacobian
from lldd_core.models.loading import ModelSpec, load_model
from lldd_core.plots import common as plots
from tests.tiny import PROMPT


@pytest.fixture(scope="module")
def result(tiny_dirs) -> JacobianResult:
    handle = load_model(ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu"))
    return analyze_jacobian(handle, handle.info.encode(PROMPT))


def _json(fig: go.Figure) -> dict:
    """The figure as the browser receives it (also proves it serializes)."""
    return json.loads(fig.to_json())


def _array(value: list | dict) -> np.ndarray:
    """A data array from figure JSON: a plain list, or plotly's typed-array ``{dtype, bdata}`` form."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value, dtype=float)


def _points(fig: go.Figure, name: str) -> go.Scatter:
    (trace,) = [t for t in fig.data if t.name == name]
    return trace


def test_reconstruction_scatter_has_two_panels_with_y_on_x(result: JacobianResult) -> None:
    fig = plots.reconstruction_scatter(result)
    data = _json(fig)
    assert {t.get("xaxis", "x") for t in data["data"]} == {"x", "x2"}  # two side-by-side subplots
    assert fig.layout.xaxis.domain[1] < fig.layout.xaxis2.domain[0]
    detached, ordinary = _points(fig, "detached"), _points(fig, "ordinary")
    np.testing.assert_array_equal(detached.x, result.y)
    np.testing.assert_array_equal(ordinary.x, result.y)
    np.testing.assert_array_equal(detached.y, result.reconstruction)
    np.testing.assert_array_equal(ordinary.y, result.plain_reconstruction)
    assert detached.xaxis in (None, "x") and ordinary.xaxis == "x2"
    sent = {t["name"]: t for t in data["data"] if t["name"] != "y = x"}
    np.testing.assert_array_equal(_array(sent["detached"]["x"]), result.y)  # what the browser receives
    assert detached.hovertemplate and "dimension" in detached.hovertemplate


def test_reconstruction_scatter_diagonals_and_error_titles(result: JacobianResult) -> None:
    fig = plots.reconstruction_scatter(result)
    diagonals = [t for t in fig.data if t.name == "y = x"]
    assert len(diagonals) == 2
    for trace in diagonals:
        assert list(trace.x) == list(trace.y)  # the y = x line
        assert trace.x[0] <= result.y.min() and trace.x[1] >= result.y.max()
    titles = [a.text for a in fig.layout.annotations]
    assert f"rel. error {result.reconstruction_error:.1e}" in titles[0]
    assert f"rel. error {result.plain_reconstruction_error:.1e}" in titles[1]
    # float64 detached mode reconstructs to rounding; the ordinary Jacobian does not
    assert result.reconstruction_error < 1e-12 < 1e-3 < result.plain_reconstruction_error
    assert "e-1" in titles[0]


def test_spectrum_one_log_line_per_token(result: JacobianResult) -> None:
    fig = plots.spectrum_figure(result)
    data = _json(fig)
    assert len(fig.data) == len(result.tokens)
    assert fig.layout.yaxis.type == "log"
    for i, trace in enumerate(fig.data):
        assert trace.name.startswith(f"{i}: ")
        assert trace.mode == "lines"
        np.testing.assert_array_equal(trace.x, np.arange(1, result.singular_values.shape[1] + 1))
        np.testing.assert_allclose(trace.y, result.singular_values[i])
        assert "%{text}" in trace.hovertemplate and trace.text[0] == trace.name
    assert data["layout"]["yaxis"]["type"] == "log"
    ticks = fig.layout.yaxis.tickvals  # labelled at 1-2-5 or powers of ten (lldd_core.plots.common.log_axis)
    assert ticks and all(f"{t:.0e}"[0] in "125" for t in ticks) and fig.layout.yaxis.minor.ticks == "outside"


def test_spectrum_drops_zeros_on_log_axis(result: JacobianResult) -> None:
    sv = result.singular_values.copy()
    sv[0, -3:] = 0.0
    sv[1, -1] = np.nan
    fig = plots.spectrum_figure(dataclasses.replace(result, singular_values=sv))
    first = np.asarray(fig.data[0].y, dtype=float)
    assert np.isnan(first[-3:]).all() and np.all(first[:-3] > 0)
    assert np.isnan(np.asarray(fig.data[1].y, dtype=float)[-1])
    sent = _array(_json(fig)["data"][0]["y"])
    assert np.isnan(sent[-1])  # plotly.js leaves a gap for NaN, where a zero would break the log axis


def test_token_labels_escape_markup() -> None:
    labels = plots.token_labels(["<s>", " a&b", "\n"])
    assert labels == ["0: '&lt;s&gt;'", "1: ' a&amp;b'", "2: '\\n'"]


def test_token_contributions_bars(result: JacobianResult) -> None:
    fig = plots.token_contribution_figure(result)
    _json(fig)
    tokens, bias = fig.data
    assert list(tokens.x) == plots.token_labels(result.tokens)
    np.testing.assert_allclose(tokens.y, result.token_contributions)
    assert list(bias.x) == ["bias b"] and bias.y[0] == pytest.approx(result.bias_norm)
    assert fig.layout.xaxis.type == "category"


def test_format_error() -> None:
    assert plots.format_error(3.2e-16) == "3.2e-16"
    assert plots.format_error(1.0) == "1.0e+00"
    assert plots.format_error(float("nan")) == "nan"
