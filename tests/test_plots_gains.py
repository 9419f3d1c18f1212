"""Figures and tables of gain curves: real results of the tiny saved gpt2 (float64, CPU) and hand-made ones."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from lldd_core.analysis.ablation import GainsAblation, ablate_gains
from lldd_core.analysis.gains import GainsResult, analyze_gains
from lldd_core.concepts.catalog import load
from lldd_core.plots import gains as pg
from tests.helpers import load as load_model

SMALL = (6, 4, 3)


@pytest.fixture(scope="module")
def handle(tiny_dirs):
    return load_model(tiny_dirs["gpt2"])


@pytest.fixture(scope="module")
def result(handle) -> GainsResult:
    return analyze_gains(handle, load("sentiment"), order=4, n_eval=3, sizes=SMALL)


@pytest.fixture(scope="module")
def by_eps(handle) -> GainsAblation:
    return ablate_gains(handle, load("sentiment"), "eps", [0.01, 0.1, 0.5], order=4, n_eval=3, sizes=SMALL)


@pytest.fixture(scope="module")
def by_complement(handle) -> GainsAblation:
    return ablate_gains(handle, load("sentiment"), "complement", None, order=4, n_eval=3, sizes=SMALL)


def _json(fig: go.Figure) -> dict:
    """The figure as the browser receives it (also proves it serializes)."""
    return json.loads(fig.to_json())


def _array(value: list | dict) -> np.ndarray:
    """A data array from figure JSON: a list (``None`` for NaN), or plotly's typed-array ``{dtype, bdata}`` form."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.array([np.nan if v is None else v for v in value], dtype=float)


def _y(trace: dict) -> np.ndarray:
    return _array(trace["y"])


def handmade() -> GainsResult:
    """Four prompts over layers 1..3 (k = 0 left out, as for Llama); prompt 3's measured curve is flat."""
    predicted = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 1.0, 0.5], [1.0, 1.0, 2.0]])
    measured = np.array([[1.5, 2.5, 2.0], [2.0, 2.0, 0.5], [0.1, 0.9, 0.7], [1.0, 1.0, 1.0]])
    exact = measured + 0.01
    return GainsResult(
        model="m", revision="r", dtype="float64", family="llama", n_params=10, dataset="d", source="builtin:d",
        classes=["a", "b"], order=2, complement="krylov", eps=0.1, mode="prompt", n_layers=4, layers=[1, 2, 3],
        split_sizes={"concept": 4, "operating": 2, "evaluation": 2}, prompts=["p0", "p1", "p2 <b>", "p3"],
        mean_spearman=0.1, mean_pearson=0.2, spearman_of_means=0.3, pearson_of_means=0.4, best_layer_predicted=3,
        best_layer_measured=2, best_layer_exact=2, elapsed_s=0.0, predicted=predicted, measured=measured,
        exact=exact, spearman=np.array([0.5, 1.0, 1.0, np.nan]), pearson=np.array([0.2, 0.9, 0.95, np.nan]),
        directions=np.zeros((5, 2)), direction_norms=[0.0, 1.0, 2.0, 3.0, 4.0], direction_noise=[0.1] * 5,
        direction_strength=[0.0, 0.1, 0.2, 0.3, 0.4],
        flagged_layers=[0], agreement_all_layers={"mean_spearman": 0.1, "mean_pearson": 0.2, "spearman_of_means": 0.3,
                                                  "pearson_of_means": 0.4},
    )


# --- numbers -------------------------------------------------------------------------------------------
def test_mean_and_std_skip_nan_without_warnings() -> None:
    x = np.array([[1.0, np.nan, np.nan], [3.0, 2.0, np.nan]])
    with np.errstate(all="raise"):
        mean, std = pg.mean_and_std(x)
    np.testing.assert_allclose(mean, [2.0, 2.0, np.nan])
    np.testing.assert_allclose(std, [1.0, 0.0, np.nan])
    mean1, std1 = pg.mean_and_std(x, axis=1)
    np.testing.assert_allclose(mean1, [1.0, 2.5])
    np.testing.assert_allclose(std1, [0.0, 0.5])
    assert pg.format_corr(float("nan")) == "n/a" and pg.format_corr(0.90612) == "0.906"


def test_splits_line_says_when_sizes_shrank() -> None:
    sizes = {"concept": 6, "operating": 4, "evaluation": 3}
    assert pg.splits_line(sizes, (6, 4, 3)) == ("6/4/3 per class (concept/operating/evaluation)", False)
    assert pg.splits_line(sizes) == ("6/4/3 per class (concept/operating/evaluation)", False)
    line, shrunk = pg.splits_line(sizes, (8, 4, 4))
    assert shrunk and "shrunk from 8/4/4" in line
    line, shrunk = pg.splits_line(sizes, (400, 200, 200))  # the default, fitted to a small dataset
    assert not shrunk and line == ("6/4/3 per class (concept/operating/evaluation), the default 400/200/200 fitted "
                                   "to the dataset's smaller class")
    full = {"concept": 400, "operating": 200, "evaluation": 200}
    assert pg.splits_line(full, (400, 200, 200)) == ("400/200/200 per class (concept/operating/evaluation)", False)


# --- one configuration -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["real", "handmade"])
def test_mean_curves_are_the_means_with_a_one_std_band(result: GainsResult, which: str) -> None:
    r = result if which == "real" else handmade()
    fig = _json(pg.mean_curves_figure(r))
    traces = fig["data"]
    assert len(traces) == 3 * len(pg.CURVES)
    for c, curve in enumerate(pg.CURVES):
        upper, lower, mean = traces[3 * c: 3 * c + 3]
        values = getattr(r, curve)
        for t in (upper, lower, mean):
            assert t["x"] == list(r.layers)
        np.testing.assert_allclose(_y(mean), values.mean(0))
        np.testing.assert_allclose(_y(upper), values.mean(0) + values.std(0))
        np.testing.assert_allclose(_y(lower), values.mean(0) - values.std(0))
        assert lower["fill"] == "tonexty" and mean["name"] == f"{pg.CURVE_LABELS[curve]}: mean"
    assert "±1 std" in fig["layout"]["title"]["text"]
    assert fig["layout"]["xaxis"]["tickvals"] == list(r.layers)


def test_prompt_curves_and_their_agreement(result: GainsResult) -> None:
    for i in range(len(result.prompts)):
        fig = _json(pg.prompt_curves_figure(result, i))
        for trace, curve in zip(fig["data"], pg.CURVES):
            np.testing.assert_allclose(_y(trace), getattr(result, curve)[i])
        assert f"Spearman {pg.format_corr(result.spearman[i])}" in fig["layout"]["title"]["text"]
    title = _json(pg.prompt_curves_figure(handmade(), 3))["layout"]["title"]["text"]
    assert "Spearman n/a, Pearson n/a" in title
    with pytest.raises(ValueError, match="prompt"):
        pg.prompt_curves_figure(result, len(result.prompts))


def test_histogram_leaves_out_undefined_correlations() -> None:
    r = handmade()
    fig = _json(pg.agreement_histogram(r))
    sp, pe = fig["data"]
    assert _array(sp["x"]).tolist() == [0.5, 1.0, 1.0] and _array(pe["x"]).tolist() == [0.2, 0.9, 0.95]
    assert "1 Spearman, 1 Pearson undefined" in fig["layout"]["title"]["text"]
    lines = [s["x0"] for s in fig["layout"]["shapes"]]
    assert lines == pytest.approx([np.mean([0.5, 1.0, 1.0]), np.mean([0.2, 0.9, 0.95])])


def test_prompt_and_curve_tables(result: GainsResult) -> None:
    r = handmade()
    table = pg.prompt_table(r)
    assert list(table.columns) == ["prompt", "text", "Spearman", "Pearson", "best layer l (predicted)",
                                   "best layer l (measured)", "best layer l (exact)"]
    assert table["text"].tolist() == r.prompts
    np.testing.assert_array_equal(table["Spearman"], r.spearman)
    assert table["best layer l (predicted)"].tolist() == [3, 1, 2, 3]
    assert table["best layer l (measured)"].tolist() == [2, 1, 2, 1]  # ties: the first layer

    real = pg.prompt_table(result)
    assert real["best layer l (exact)"].tolist() == [result.layers[k] for k in result.exact.argmax(1)]
    long = pg.curves_table(result)
    assert len(long) == result.predicted.size
    assert long["layer l (x_l)"].tolist() == list(result.layers) * len(result.prompts)
    np.testing.assert_array_equal(long["measured"], result.measured.ravel())
    first = long[long["prompt"] == 0]
    assert first["text"].unique().tolist() == [result.prompts[0]]
    np.testing.assert_array_equal(first["exact"], result.exact[0])
    assert pd.read_csv(pd.io.common.StringIO(long.to_csv(index=False))).shape == long.shape


# --- ablations ---------------------------------------------------------------------------------------------
def test_eps_ablation_figure_has_log_x_error_bars_and_the_main_setting(by_eps: GainsAblation) -> None:
    fig = _json(pg.ablation_figure(by_eps))
    names = [t["name"] for t in fig["data"]]
    assert names == ["mean Spearman", "mean Pearson", "Spearman of mean curves", "Pearson of mean curves",
                     "main setting: 0.1"]
    sp, pe, sp_means, pe_means, current = fig["data"]
    assert sp["x"] == [0.01, 0.1, 0.5] and fig["layout"]["xaxis"]["type"] == "log"
    assert fig["layout"]["xaxis"]["range"] == pytest.approx([np.log10(0.01) - 0.1, np.log10(0.5) + 0.1])
    assert "scattermode" not in fig["layout"]  # no offsets on a numeric axis
    np.testing.assert_allclose(_y(sp), by_eps.mean_spearman)
    np.testing.assert_allclose(_y(pe), by_eps.mean_pearson)
    np.testing.assert_allclose(_array(sp["error_y"]["array"]), np.nanstd(by_eps.spearman, axis=1))
    np.testing.assert_allclose(_array(pe["error_y"]["array"]), np.nanstd(by_eps.pearson, axis=1))
    np.testing.assert_allclose(_y(sp_means), by_eps.spearman_of_means)
    np.testing.assert_allclose(_y(pe_means), by_eps.pearson_of_means)
    assert current["x"] == [0.1, 0.1]


def test_complement_ablation_is_bars(by_complement: GainsAblation) -> None:
    fig = _json(pg.ablation_figure(by_complement))
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [b["name"] for b in bars] == ["mean Spearman", "mean Pearson"]
    assert bars[0]["x"] == ["krylov", "random", "pca"]
    np.testing.assert_allclose(_y(bars[0]), by_complement.mean_spearman)
    axis = fig["layout"]["xaxis"]
    assert axis["type"] == "category" and axis["tickvals"] == ["krylov", "random", "pca"]
    assert axis["ticktext"] == ["<b>krylov</b><br>(main setting)", "random", "pca"]  # the main setting
    (column,) = fig["layout"]["shapes"]
    assert (column["x0"], column["x1"]) == (-0.5, 0.5)
    means = [t for t in fig["data"] if t["name"].endswith("of mean curves")]
    np.testing.assert_allclose(_y(means[1]), by_complement.pearson_of_means)
    assert [t["offsetgroup"] for t in means] == ["spearman", "pearson"]


def test_ablation_table_and_a_main_setting_outside_the_sweep(by_eps: GainsAblation) -> None:
    table = pg.ablation_table(by_eps)
    assert list(table.columns) == ["ε", "mean Spearman", "Spearman std", "mean Pearson", "Pearson std",
                                   "Spearman of means", "Pearson of means", "main setting"]
    assert table["ε"].tolist() == [0.01, 0.1, 0.5] and table["main setting"].tolist() == [False, True, False]
    np.testing.assert_allclose(table["mean Pearson"], by_eps.mean_pearson)
    np.testing.assert_allclose(table["Spearman std"], np.nanstd(by_eps.spearman, axis=1))

    orders = dataclasses.replace(by_eps, vary="order", values=[1, 2, 4], order=3)
    fig = _json(pg.ablation_figure(orders))
    assert fig["data"][-1]["x"] == [3, 3] and fig["data"][-1]["name"] == "main setting: 3"
    assert fig["layout"]["xaxis"]["tickvals"] == [1, 2, 3, 4]
    assert not pg.ablation_table(orders)["main setting"].any()


def test_the_three_bands_are_told_apart_by_more_than_colour() -> None:
    """Each curve's ±1 std band has its own legend entry and its own fill (opacity, hatching) and edge; the mean
    lines differ in dash, so print in grey or a colour-blind reader still tells them apart."""
    from lldd_core.plots.common import REPORT

    for theme in (pg.DASHBOARD, REPORT):
        fig = pg.mean_curves_figure(handmade(), theme=theme)
        bands = [t for t in fig.data if t.fill == "tonexty"]
        means = [t for t in fig.data if t.mode == "lines+markers"]
        assert [t.name for t in bands] == [f"{pg.CURVE_LABELS[c]}: {pg.SPREAD_LABEL}" for c in pg.CURVES]
        assert all(t.showlegend for t in bands) and all(t.showlegend is not False for t in means)
        looks = {(t.fillcolor, t.fillpattern.shape if t.fillpattern else "") for t in bands}
        assert len(looks) == 3 and len({t.fillpattern.shape if t.fillpattern else "" for t in bands}) == 3
        assert len({t.line.dash for t in means}) == 3
        assert [t.line.color for t in means] == [theme.color(c) for c in pg.CURVES]
        mean, std = pg.mean_and_std(handmade().measured)
        upper, lower = (t for t in fig.data if t.legendgroup == "measured band")
        assert np.allclose(upper.y, mean + std) and np.allclose(lower.y, mean - std)
