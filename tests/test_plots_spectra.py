"""Figures and tables of decoded spectra on real results of the tiny saved gpt2 (float64, CPU, via the service)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from lldd_core.analysis.layers import LayersResult
from lldd_core.analysis.spectrum import SpectrumResult
from lldd_core.forward.views import SITE_LABELS, SITES
from lldd_core.models.loading import ModelSpec
from lldd_core.plots import spectra as ps
from lldd_core.plots.common import token_labels
from lldd_core.service import Service
from tests.tiny import PROMPT


@pytest.fixture(scope="module")
def full(module_service: Service, gpt2_f64: ModelSpec) -> SpectrumResult:
    return module_service.spectrum(gpt2_f64, PROMPT, k=4, n_decode=5, method="full").result


@pytest.fixture(scope="module")
def matrix_free(module_service: Service, gpt2_f64: ModelSpec) -> SpectrumResult:
    return module_service.spectrum(gpt2_f64, PROMPT, k=4, n_decode=5, method="matrix_free").result


@pytest.fixture(scope="module")
def layers(module_service: Service, gpt2_f64: ModelSpec) -> LayersResult:
    return module_service.layers(gpt2_f64, PROMPT, k=4, n_decode=4, method="full").result


def _json(fig: go.Figure) -> dict:
    """The figure as the browser receives it (also proves it serializes)."""
    return json.loads(fig.to_json())


# --- tokens in cells and highlighting ---------------------------------------------------------------
def test_display_token_and_cells_round_trip() -> None:
    assert ps.display_token(" Paris") == "Paris"
    assert ps.display_token(" ") == "' '" and ps.display_token("\n") == "'\\n'"
    assert ps.display_token("\x12") == "'\\x12'"
    assert ps.SEP.strip() not in ps.display_token("a·b")  # a cell always splits back into its tokens
    cell = ps.token_cell([" Paris", "France", " ", "a·b"], n=3)
    assert cell == "Paris · France · ' '"
    assert ps.cell_tokens(cell) == ["Paris", "France", "' '"]
    assert ps.cell_tokens("") == []
    assert ps.column_label(3, " Gate") == "3: Gate"


def test_parse_words_and_colors() -> None:
    assert ps.parse_words(" Paris, France  paris,,Rome\n") == ["Paris", "France", "Rome"]
    assert ps.parse_words("") == []
    colors = ps.highlight_colors([f"w{i}" for i in range(10)])
    assert list(colors.values())[:8] == list(ps.HIGHLIGHT_COLORS)
    assert colors["w8"] == ps.HIGHLIGHT_COLORS[0]  # the palette repeats


def test_matched_word_compares_whole_tokens_ignoring_case() -> None:
    colors = ps.highlight_colors(["paris", "Rome"])
    assert ps.matched_word("Paris · France", colors) == "paris"
    assert ps.matched_word("Rome · Paris", colors) == "paris"  # the first word given wins
    assert ps.matched_word("Parisian · Romeo", colors) is None  # whole tokens, not substrings
    assert ps.matched_word(3.5, colors) is None
    assert ps.cell_style("x · rome", colors) == f"background-color: {ps.HIGHLIGHT_COLORS[1]}; color: {ps.HIGHLIGHT_TEXT}"
    assert ps.cell_style("x", colors) == ""


def test_highlight_table_styles_matching_cells_only() -> None:
    table = pd.DataFrame({"σ": [1.23456789, 2e-16], "tokens": ["Paris · France", "Rome"]})
    styler = ps.highlight_table(table, ps.highlight_colors(["france"]))
    assert styler.data is table  # data untouched, styles on top
    html = styler.to_html()
    assert ps.HIGHLIGHT_COLORS[0] in html and "1.235" in html and "2e-16" in html
    assert ps.HIGHLIGHT_COLORS[0] not in ps.highlight_table(table, {}).to_html()


# --- one layer: SpectrumResult ----------------------------------------------------------------------
def test_spectrum_table_matches_the_result(full: SpectrumResult) -> None:
    T = len(full.tokens)
    table = ps.spectrum_table(full, T - 1)
    assert list(table.columns) == ["j", "σ_j", "residual", "U tokens (output, logits)", "V tokens (input, cosine)"]
    np.testing.assert_array_equal(table["j"], np.arange(1, full.k + 1))
    np.testing.assert_array_equal(table["σ_j"], full.singular_values[-1])
    np.testing.assert_array_equal(table["residual"], full.residual[-1])
    assert list(table["U tokens (output, logits)"]) == [ps.token_cell(c) for c in full.u_tokens[-1]]
    assert list(table["V tokens (input, cosine)"]) == [ps.token_cell(c) for c in full.v_tokens[-1]]
    assert len(ps.cell_tokens(table.iloc[0, 3])) == full.n_decode
    pd.testing.assert_frame_equal(ps.spectrum_table(full, -1), table)  # negative positions count from the end
    with pytest.raises(ValueError, match="outside"):
        ps.spectrum_table(full, T)


def test_spectrum_table_opposite_sign(full: SpectrumResult) -> None:
    plus, minus = ps.spectrum_table(full, 2), ps.spectrum_table(full, 2, negative=True)
    assert list(minus.columns)[3:] == ["−U tokens (output, logits)", "−V tokens (input, cosine)"]
    assert list(minus.iloc[:, 3]) == [ps.token_cell(c) for c in full.u_tokens_neg[2]]
    assert list(minus.iloc[:, 4]) == [ps.token_cell(c) for c in full.v_tokens_neg[2]]
    assert list(minus.iloc[:, 3]) != list(plus.iloc[:, 3])
    np.testing.assert_array_equal(minus["σ_j"], plus["σ_j"])


def test_token_spectrum_table(full: SpectrumResult, matrix_free: SpectrumResult) -> None:
    table = ps.token_spectrum_table(full)
    assert list(table.columns) == ["position", "token", "σ_1", "stable rank", "max residual"]
    assert list(table["token"]) == [ps.display_token(t) for t in full.tokens]
    np.testing.assert_array_equal(table["stable rank"], full.stable_rank)
    np.testing.assert_array_equal(table["σ_1"], full.singular_values[:, 0])
    np.testing.assert_array_equal(table["max residual"], full.residual.max(axis=1))
    estimated = ps.token_spectrum_table(matrix_free)  # the estimate comes with its standard error
    np.testing.assert_array_equal(estimated["± se"], matrix_free.stable_rank_se)
    assert (estimated["± se"] > 0).all()


def test_norm_tables_decode_the_largest_rows_and_columns(full: SpectrumResult, matrix_free: SpectrumResult) -> None:
    rows, cols = ps.norm_table(full, 1, "rows"), ps.norm_table(full, 1, "columns")
    np.testing.assert_array_equal(rows["row"], full.top_rows[1])
    np.testing.assert_array_equal(rows["norm"], full.row_norms[1, full.top_rows[1]])
    np.testing.assert_array_equal(cols["column"], full.top_cols[1])
    np.testing.assert_array_equal(cols["norm"], full.col_norms[1, full.top_cols[1]])
    assert (np.diff(rows["norm"]) <= 0).all() and rows["norm"].iloc[0] == full.row_norms[1].max()
    assert list(rows["tokens (input, cosine)"]) == [ps.token_cell(c) for c in full.row_tokens[1]]
    assert list(cols["tokens (output, logits)"]) == [ps.token_cell(c) for c in full.col_tokens[1]]
    with pytest.raises(ValueError, match="full and streamed paths"):
        ps.norm_table(matrix_free, 1)
    with pytest.raises(ValueError, match="which"):
        ps.norm_table(full, 1, "diagonal")


def test_norm_distribution_histograms(full: SpectrumResult, matrix_free: SpectrumResult) -> None:
    fig = ps.norm_distribution_figure(full, -1)
    data = _json(fig)
    rows, cols = fig.data
    assert isinstance(rows, go.Histogram) and isinstance(cols, go.Histogram)
    np.testing.assert_array_equal(rows.x, full.row_norms[-1])
    np.testing.assert_array_equal(cols.x, full.col_norms[-1])
    assert data["data"][1]["xaxis"] == "x2"  # side by side
    assert token_labels(full.tokens)[-1] in fig.layout.title.text
    with pytest.raises(ValueError, match="full and streamed paths"):
        ps.norm_distribution_figure(matrix_free, 0)


# --- every layer: LayersResult ----------------------------------------------------------------------
def test_singular_value_heatmap_is_log_sv_over_layers(layers: LayersResult) -> None:
    si = layers.site_index("attention")
    fig = ps.singular_value_heatmap(layers, "attention", 3)
    _json(fig)
    (heat,) = fig.data
    expected = layers.singular_values[si, :, 3, :]  # [L, k]
    assert np.asarray(heat.z).shape == (layers.n_layers, layers.k)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), np.log10(expected))
    np.testing.assert_array_equal(heat.customdata, expected)  # the hover shows the value itself
    np.testing.assert_array_equal(heat.y, np.arange(layers.n_layers))  # a block view: by block b = 0..L-1
    np.testing.assert_array_equal(heat.x, np.arange(1, layers.k + 1))
    assert SITE_LABELS["attention"] in fig.layout.title.text and fig.layout.yaxis.title.text.startswith("block b")
    cumulative = ps.singular_value_heatmap(layers, "cumulative", 3)  # x_0 -> x_l: by layer l = 1..L
    np.testing.assert_array_equal(cumulative.data[0].y, np.arange(1, layers.n_layers + 1))
    assert "x_l" in cumulative.layout.yaxis.title.text
    sv = layers.singular_values.copy()
    sv[si, 0, 3, -1] = 0.0  # an exact zero is a gap, not -inf
    z = np.asarray(ps.singular_value_heatmap(dataclasses.replace(layers, singular_values=sv), "attention", 3).data[0].z,
                   dtype=float)
    assert np.isnan(z[0, -1]) and np.isfinite(z[0, :-1]).all()
    with pytest.raises(ValueError, match="not computed"):
        ps.singular_value_heatmap(dataclasses.replace(layers, sites=["cumulative"]), "mlp", 0)


def test_stable_rank_figure_per_token_and_mean(layers: LayersResult) -> None:
    fig = ps.stable_rank_figure(layers, token=2)
    _json(fig)
    assert [t.name for t in fig.data] == [SITE_LABELS[s] for s in SITES]
    for si, trace in enumerate(fig.data):
        np.testing.assert_array_equal(trace.x, np.arange(1, layers.n_layers + 1))
        np.testing.assert_array_equal(trace.y, layers.stable_rank[si, :, 2])
        assert trace.error_y.visible is False  # exact on the full path
    mean = ps.stable_rank_figure(layers)
    for si, trace in enumerate(mean.data):
        np.testing.assert_allclose(trace.y, layers.stable_rank[si].mean(axis=1))
    assert "mean over tokens" in mean.layout.title.text
    se = np.full_like(layers.stable_rank, 0.1)  # estimated: error bars, shrinking for the mean
    token_fig = ps.stable_rank_figure(dataclasses.replace(layers, stable_rank_se=se), token=0)
    assert token_fig.data[0].error_y.visible and np.allclose(token_fig.data[0].error_y.array, 0.1)
    mean_fig = ps.stable_rank_figure(dataclasses.replace(layers, stable_rank_se=se))
    np.testing.assert_allclose(mean_fig.data[0].error_y.array, 0.1 / np.sqrt(len(layers.tokens)))


def test_emergence_figure_one_line_per_token(layers: LayersResult) -> None:
    fig = ps.emergence_figure(layers, "mlp")
    _json(fig)
    si = layers.site_index("mlp")
    assert [t.name for t in fig.data] == token_labels(layers.tokens)
    for i, trace in enumerate(fig.data):
        np.testing.assert_array_equal(trace.y, layers.projection[si, :, i])
    assert tuple(fig.layout.yaxis.range) == (0, 1.05)
    final = ps.emergence_figure(layers)  # cumulative at the last layer is the reference itself
    np.testing.assert_allclose([t.y[-1] for t in final.data], 1.0, atol=1e-9)


def test_emergence_table_layers_by_tokens(layers: LayersResult) -> None:
    si = layers.site_index("block")
    table = ps.emergence_table(layers, "block", vector=1, space="u", n=2)
    assert table.shape == (layers.n_layers, len(layers.tokens) + 1)
    assert list(table.columns) == ["block b", *(ps.column_label(i, t) for i, t in enumerate(layers.tokens))]
    np.testing.assert_array_equal(table["block b"], np.arange(layers.n_layers))
    cumulative = ps.emergence_table(layers, "cumulative")
    np.testing.assert_array_equal(cumulative["layer l (x_0 → x_l)"], np.arange(1, layers.n_layers + 1))
    for li in range(layers.n_layers):
        for i in range(len(layers.tokens)):
            cell = table.iloc[li, i + 1]
            assert cell == ps.token_cell(layers.u_tokens[si][li][i][1][:2])
            assert len(ps.cell_tokens(cell)) == 2
    v = ps.emergence_table(layers, "block", space="v", n=3)
    assert v.iloc[0, 1] == ps.token_cell(layers.v_tokens[si][0][0][0][:3])
    neg = ps.emergence_table(layers, "block", space="u_neg")
    assert neg.iloc[-1, -1] == ps.token_cell(layers.u_tokens_neg[si][-1][-1][0][:3])
    wide = ps.emergence_table(layers, "block", n=99)  # at most what was decoded
    assert len(ps.cell_tokens(wide.iloc[0, 1])) == layers.n_decode
    with pytest.raises(ValueError, match="vector"):
        ps.emergence_table(layers, "block", vector=3)
    with pytest.raises(ValueError, match="space"):
        ps.emergence_table(layers, "block", space="w")


def test_stable_rank_table_is_long(layers: LayersResult) -> None:
    table = ps.stable_rank_table(layers)
    S, L, T = layers.stable_rank.shape
    assert len(table) == S * L * T
    row = table[(table.site == "mlp") & (table["layer l (output x_l)"] == 2) & (table.position == 5)]
    assert row["block b (writing x_l)"].item() == 1
    si = layers.site_index("mlp")
    assert row["token"].item() == layers.tokens[5]
    assert row["stable rank"].item() == layers.stable_rank[si, 1, 5]
    assert row["σ_1"].item() == layers.singular_values[si, 1, 5, 0]
    assert row["projection on final"].item() == layers.projection[si, 1, 5]
    assert "stable rank se" in table.columns


def test_file_slug() -> None:
    assert ps.file_slug("/org/some model/") == "org_some_model"
