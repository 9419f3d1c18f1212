"""Figures and tables of decoded spectra: one prompt's ``J_i`` and every layer's views.

Data in, figure or table out, no streamlit (see :mod:`lldd_core.plots.common`). Builders take a
:class:`~lldd_core.analysis.spectrum.SpectrumResult` (one layer, every input token ``i``) or a
:class:`~lldd_core.analysis.layers.LayersResult` (every ``(site, layer)`` view) and never mutate it.

Tables are :class:`pandas.DataFrame` of plain strings and numbers (ready for CSV). A cell of
decoded tokens joins them with :data:`SEP`; :func:`highlight_table` colours the cells in which a
token equals one of the user's words (ignoring case and surrounding spaces).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..layering import BLOCK_SITES, SITE_LABELS, block_axis, layer_axis, stream
from .common import DASHBOARD, Theme, plotly_text, positive_or_nan, token_label, token_labels

if TYPE_CHECKING:  # types only: importing the analyses at run time would pull in torch
    from pandas.io.formats.style import Styler

    from ..analysis.layers import LayersResult
    from ..analysis.spectrum import SpectrumResult

#: Separator of the decoded tokens in a table cell.
SEP = " · "
#: Light backgrounds for highlighted words, in the order the words are given (then repeated).
HIGHLIGHT_COLORS: tuple[str, ...] = (
    "#ffd166", "#8ecae6", "#b5e48c", "#ffadad", "#cdb4db", "#f4a261", "#a0c4ff", "#fdffb6",
)
#: Text colour on a highlighted cell (readable on every background above, in light and dark themes).
HIGHLIGHT_TEXT = "#111111"
#: Spaces of the decoded vectors, as :func:`emergence_table` names them.
SPACES: dict[str, str] = {
    "u": "U: output space (logits)",
    "u_neg": "−U: output space, opposite sign (logits)",
    "v": "V: input space (cosine to embeddings)",
}
_MARGIN = {"l": 60, "r": 20, "t": 60, "b": 50}


# --- tokens in tables -------------------------------------------------------------------------------
def display_token(token: str) -> str:
    """A decoded token as a table shows it: stripped of surrounding spaces when that leaves readable
    text (``" Paris"`` -> ``"Paris"``), else its ``repr`` (``" "`` -> ``"' '"``, ``"\\n"`` -> ``"'\\\\n'"``).

    Never contains :data:`SEP`'s dot, so a cell splits back into its tokens.
    """
    text = token.strip()
    if text and text.isprintable() and SEP.strip() not in text:
        return text
    return ascii(token) if SEP.strip() in token else repr(token)


def token_cell(tokens: Sequence[str], n: int | None = None) -> str:
    """The first ``n`` (default all) decoded tokens of one vector as one table cell."""
    return SEP.join(display_token(t) for t in list(tokens)[:n])


def cell_tokens(cell: str) -> list[str]:
    """The displayed tokens of a :func:`token_cell`."""
    return cell.split(SEP) if cell else []


def column_label(position: int, token: str) -> str:
    """A unique table column for an input token: ``"3: Gate"`` (plain text, not HTML)."""
    return f"{position}: {display_token(token)}"


def parse_words(text: str) -> list[str]:
    """Words to highlight from free text: split at commas and spaces, duplicates (any case) dropped."""
    words: list[str] = []
    seen: set[str] = set()
    for word in re.split(r"[,\s]+", text or ""):
        if word and word.casefold() not in seen:
            seen.add(word.casefold())
            words.append(word)
    return words


def highlight_colors(words: Sequence[str]) -> dict[str, str]:
    """Each word's background colour, in order (the palette repeats after eight words)."""
    return {word: HIGHLIGHT_COLORS[i % len(HIGHLIGHT_COLORS)] for i, word in enumerate(words)}


def matched_word(cell: object, colors: Mapping[str, str]) -> str | None:
    """The first word of ``colors`` that equals one of the cell's tokens (case-insensitive), if any."""
    if not isinstance(cell, str):
        return None
    tokens = {t.casefold() for t in cell_tokens(cell)}
    return next((w for w in colors if w.strip().casefold() in tokens), None)


def cell_style(cell: object, colors: Mapping[str, str]) -> str:
    """The CSS of one cell: its first matching word's background, or nothing."""
    word = matched_word(cell, colors)
    return "" if word is None else f"background-color: {colors[word]}; color: {HIGHLIGHT_TEXT}"


def highlight_table(table: pd.DataFrame, colors: Mapping[str, str], columns: Sequence[str] | None = None) -> Styler:
    """``table`` styled: cells of ``columns`` (default: every text column) coloured by their matching
    word, floats with four significant digits. The data are unchanged (``.data`` is ``table``)."""
    if columns is None:  # text columns: pandas' string dtype (pandas 3) or plain objects
        columns = [c for c in table.columns if pd.api.types.is_string_dtype(table[c]) or table[c].dtype == object]
    text_cols = list(columns)
    float_cols = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    styler = table.style.format("{:.4g}", subset=float_cols) if float_cols else table.style
    if colors and text_cols:
        styler = styler.map(lambda cell: cell_style(cell, colors), subset=text_cols)
    return styler


# --- one layer: SpectrumResult ----------------------------------------------------------------------
def _position(tokens: Sequence[str], token: int) -> int:
    """``token`` as a position in ``0..T-1`` (negative counts from the end); ValueError if outside."""
    try:
        return range(len(tokens))[int(token)]
    except IndexError:
        raise ValueError(f"token position {token} outside 0..{len(tokens) - 1}") from None


def _row(result: SpectrumResult, token: int) -> int:
    """The array row of input position ``token`` (negative counts from the end) in ``result``, which may hold
    only some positions (``result.rows``); ValueError if it was not computed."""
    position = _position(result.tokens, token)
    rows = result.rows
    if position not in rows:
        raise ValueError(f"token position {position} was not computed (positions {', '.join(map(str, rows))})")
    return rows.index(position)


def spectrum_table(result: SpectrumResult, token: int, negative: bool = False) -> pd.DataFrame:
    """Top-``k`` singular pairs of ``J_i`` for input token ``token``, decoded.

    One row per pair ``j``: ``σ_j``, the residual of the pair (relative to ``σ_1``), the top tokens
    of ``u_j`` (output space, by logits) and of ``v_j`` (input space, by cosine). ``negative``
    decodes ``-u_j`` and ``-v_j`` instead (the pair's opposite sign).
    """
    i = _row(result, token)
    u = result.u_tokens_neg if negative else result.u_tokens
    v = result.v_tokens_neg if negative else result.v_tokens
    sign = "−" if negative else ""
    return pd.DataFrame(
        {
            "j": np.arange(1, result.k + 1),
            "σ_j": np.asarray(result.singular_values[i], dtype=float),
            "residual": np.asarray(result.residual[i], dtype=float),
            f"{sign}U tokens (output, logits)": [token_cell(cell) for cell in u[i]],
            f"{sign}V tokens (input, cosine)": [token_cell(cell) for cell in v[i]],
        }
    )


def token_spectrum_table(result: SpectrumResult) -> pd.DataFrame:
    """One row per input token: ``σ_1``, stable rank (with its standard error on the matrix-free
    path, where it is estimated), largest residual of its pairs."""
    table = pd.DataFrame(
        {
            "position": np.asarray(result.rows, dtype=int),
            "token": [display_token(result.tokens[p]) for p in result.rows],
            "σ_1": np.asarray(result.singular_values[:, 0], dtype=float),
            "stable rank": np.asarray(result.stable_rank, dtype=float),
        }
    )
    if result.method == "matrix_free":
        table["± se"] = np.asarray(result.stable_rank_se, dtype=float)
    table["max residual"] = np.asarray(result.residual, dtype=float).max(axis=1)
    return table


def norm_table(result: SpectrumResult, token: int, which: str = "rows") -> pd.DataFrame:
    """The rows (input space, decoded by cosine) or columns (output space, by logits) of ``J_i`` of
    largest norm, largest first. Only on the full and streamed paths (``result.has_rows``)."""
    if not result.has_rows:
        raise ValueError("rows and columns are only computed on the full and streamed paths")
    if which not in ("rows", "columns"):
        raise ValueError(f"which must be 'rows' or 'columns'; got {which!r}")
    i = _row(result, token)
    rows = which == "rows"
    index = np.asarray((result.top_rows if rows else result.top_cols)[i], dtype=int)
    norms = np.asarray((result.row_norms if rows else result.col_norms)[i], dtype=float)
    decoded = (result.row_tokens if rows else result.col_tokens)[i]
    return pd.DataFrame(
        {
            "rank": np.arange(1, index.size + 1),
            "row" if rows else "column": index,
            "norm": norms[index],
            "tokens (input, cosine)" if rows else "tokens (output, logits)": [token_cell(c) for c in decoded],
        }
    )


def norm_distribution_figure(result: SpectrumResult, token: int, theme: Theme = DASHBOARD) -> go.Figure:
    """Histograms of the row norms ``‖J_i[r, :]‖`` and column norms ``‖J_i[:, c]‖`` of one token's
    ``J_i`` (full and streamed paths). Both sum in square to ``‖J_i‖_F^2``."""
    if not result.has_rows:
        raise ValueError("row and column norms are only computed on the full and streamed paths")
    i = _row(result, token)
    rows = np.asarray(result.row_norms[i], dtype=float)
    cols = np.asarray(result.col_norms[i], dtype=float)
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.1,
        subplot_titles=(f"Row norms ‖J_i[r, :]‖ ({rows.size} rows)", f"Column norms ‖J_i[:, c]‖ ({cols.size} columns)"),
    )
    for col, (values, name, color) in enumerate(((rows, "rows", theme.color("detached")), (cols, "columns", theme.color("plain"))), 1):
        fig.add_trace(
            go.Histogram(
                x=values, name=name, marker={"color": color}, opacity=0.85,
                hovertemplate="norm %{x}<br>%{y} " + name + "<extra></extra>",
            ),
            row=1, col=col,
        )
    fig.update_xaxes(title_text="norm")
    fig.update_yaxes(title_text="count", row=1, col=1)
    fig.update_layout(
        title={"text": f"Row and column norms of J_i, token {token_label(i, result.tokens[i])} "
                       f"(output {stream(result.layer)}, layer {result.layer} of 0..{result.n_layers})"},
        height=380, margin=_MARGIN, showlegend=False, bargap=0.05,
    )
    return theme.apply(fig)


# --- every layer: LayersResult ----------------------------------------------------------------------
def _site(result: LayersResult, site: str) -> int:
    if site not in result.sites:
        raise ValueError(f"site {site!r} was not computed; this result has {', '.join(result.sites)}")
    return result.site_index(site)


def _layers(result: LayersResult) -> np.ndarray:
    """The output layers ``l = 1..L`` of the views, in the result's order (``x_l`` is what each writes)."""
    return np.arange(1, result.n_layers + 1)


def _site_axis(result: LayersResult, site: str) -> tuple[np.ndarray, str, str]:
    """(the numbers, axis title, hover word) of ``site``'s views over depth: a cumulative view by its layer
    ``l`` (``x_0 → x_l``, ``1..L``), a block view by its block ``b`` (``x_b → x_{b+1}``, ``0..L-1``)."""
    if site in BLOCK_SITES:
        detail = {"block": "x_b → x_{b+1}", "attention": "its attention term, into x_{b+1}",
                  "mlp": "its MLP term, into x_{b+1}"}[site]
        return _layers(result) - 1, block_axis(detail), "block"
    return _layers(result), layer_axis("cumulative x_0 → x_l"), "layer"


def singular_value_heatmap(result: LayersResult, site: str, token: int, theme: Theme = DASHBOARD) -> go.Figure:
    """Top-``k`` singular values of one site's view of ``J_i`` over layers, for one input token.

    Layers on the y axis, singular value index on the x axis, colour ``log10 σ`` (zeros are gaps);
    the hover shows the value itself.
    """
    si, i = _site(result, site), _position(result.tokens, token)
    sv = np.asarray(result.singular_values[si, :, i, :], dtype=float)  # [L, k]
    depth, title, word = _site_axis(result, site)
    with np.errstate(invalid="ignore"):
        z = np.log10(positive_or_nan(sv))
    fig = go.Figure(
        go.Heatmap(
            z=z, x=np.arange(1, result.k + 1), y=depth, customdata=sv,
            colorscale="Viridis", colorbar={"title": {"text": "log₁₀ σ"}},
            hovertemplate=word + " %{y}<br>σ_%{x} = %{customdata:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": f"Singular values, {SITE_LABELS[site]}, token {token_label(i, result.tokens[i])}"},
        xaxis={"title": {"text": "index j"}, "dtick": 1},
        yaxis={"title": {"text": title}, "dtick": 1},
        height=420, margin=_MARGIN,
    )
    return theme.apply(fig)


def stable_rank_figure(result: LayersResult, token: int | None = None, theme: Theme = DASHBOARD) -> go.Figure:
    """Stable rank ``‖J_i‖_F² / σ_1²`` over layers, one line per site, for one token (or the mean
    over tokens when ``token`` is ``None``). Error bars: the standard error on the matrix-free path.

    Every view is drawn over the layer ``l`` it writes into (``x_l``); each tick also names the block
    ``b = l - 1`` (``x_b → x_{b+1}``) whose block views stand there."""
    i = None if token is None else _position(result.tokens, token)
    sr = np.asarray(result.stable_rank, dtype=float)
    se = np.asarray(result.stable_rank_se, dtype=float)
    fig = go.Figure()
    for si, site in enumerate(result.sites):
        if i is None:
            y = sr[si].mean(axis=1)
            err = np.sqrt((se[si] ** 2).sum(axis=1)) / sr.shape[2]  # independent estimates
        else:
            y, err = sr[si, :, i], se[si, :, i]
        fig.add_trace(
            go.Scatter(
                x=_layers(result), y=y, mode="lines+markers", name=SITE_LABELS[site],
                line={"color": theme.color(site)},
                error_y={"type": "data", "array": err, "visible": bool(np.any(err > 0))},
                customdata=_layers(result) - 1,
                hovertemplate="layer %{x} (block %{customdata})<br>stable rank %{y:.4g}<extra>"
                + plotly_text(site) + "</extra>",
            )
        )
    which = "mean over tokens" if i is None else f"token {token_label(i, result.tokens[i])}"
    layers = _layers(result).tolist()
    fig.update_layout(
        title={"text": f"Stable rank over depth ({which})"},
        xaxis={"title": {"text": layer_axis("the view's output x_l; block views: block l − 1")},
               "tickmode": "array", "tickvals": layers, "ticktext": [f"{l}<br>block {l - 1}" for l in layers]},
        yaxis={"title": {"text": "stable rank ‖J_i‖²_F / σ_1²"}},
        height=420, margin=_MARGIN, legend={"title": {"text": "view"}}, hovermode="x unified",
    )
    return theme.apply(fig)


def emergence_figure(result: LayersResult, site: str = "cumulative", theme: Theme = DASHBOARD) -> go.Figure:
    """Emergence: ``‖U_L^T u_1‖`` over layers, one line per input token.

    How much of the view's top output direction ``u_1`` at layer ``k`` lies in the span of the
    final layer's top-``k`` output directions (cumulative view at ``L``, same token); 1 once the
    final computation has emerged.
    """
    si = _site(result, site)
    proj = np.asarray(result.projection[si], dtype=float)  # [L, T]
    depth, title, word = _site_axis(result, site)
    fig = go.Figure()
    for i, label in enumerate(token_labels(result.tokens)):
        fig.add_trace(
            go.Scatter(
                x=depth, y=proj[:, i], mode="lines+markers", name=label, text=[label] * proj.shape[0],
                line={"color": theme.cycle(i)},
                hovertemplate="%{text}<br>" + word + " %{x}<br>‖U_L^T u_1‖ = %{y:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        title={"text": f"Emergence of the final top directions, {SITE_LABELS[site]}"},
        xaxis={"title": {"text": title}, "dtick": 1},
        yaxis={"title": {"text": "‖U_L^T u_1‖"}, "range": [0, 1.05]},
        height=420, margin=_MARGIN, legend={"title": {"text": "token"}},
    )
    return theme.apply(fig)


def emergence_table(result: LayersResult, site: str, vector: int = 0, space: str = "u", n: int = 3) -> pd.DataFrame:
    """The paper's emergence table: one row per layer, one column per input token, each cell the top
    ``n`` decoded tokens of singular vector ``vector`` (0 = top) of that view.

    ``space``: ``"u"`` (output space, logits), ``"u_neg"`` (``-u``) or ``"v"`` (input space, cosine);
    see :data:`SPACES`.
    """
    si = _site(result, site)
    decoded = {"u": result.u_tokens, "u_neg": result.u_tokens_neg, "v": result.v_tokens}.get(space)
    if decoded is None:
        raise ValueError(f"space must be one of {', '.join(SPACES)}; got {space!r}")
    n_vectors = len(decoded[si][0][0])
    if not 0 <= vector < n_vectors:
        raise ValueError(f"vector must lie in 0..{n_vectors - 1}; got {vector}")
    n = max(1, min(int(n), result.n_decode))
    depth, _, word = _site_axis(result, site)
    table = {"layer l (x_0 → x_l)" if word == "layer" else "block b": depth}
    for i, tok in enumerate(result.tokens):
        table[column_label(i, tok)] = [token_cell(decoded[si][li][i][vector], n) for li in range(result.n_layers)]
    return pd.DataFrame(table)


def stable_rank_table(result: LayersResult) -> pd.DataFrame:
    """Long table for CSV: one row per (site, layer, token) with ``σ_1``, the stable rank, its
    standard error (0 where exact) and the emergence projection."""
    S, L, T = np.asarray(result.stable_rank).shape
    site, layer, pos = np.meshgrid(np.arange(S), np.arange(L), np.arange(T), indexing="ij")
    return pd.DataFrame(
        {
            "site": [result.sites[s] for s in site.ravel()],
            "layer l (output x_l)": layer.ravel() + 1,
            "block b (writing x_l)": layer.ravel(),
            "position": pos.ravel(),
            "token": [result.tokens[p] for p in pos.ravel()],
            "σ_1": np.asarray(result.singular_values, dtype=float)[..., 0].ravel(),
            "stable rank": np.asarray(result.stable_rank, dtype=float).ravel(),
            "stable rank se": np.asarray(result.stable_rank_se, dtype=float).ravel(),
            "projection on final": np.asarray(result.projection, dtype=float).ravel(),
        }
    )


# --- downloads --------------------------------------------------------------------------------------
def file_slug(text: str, limit: int = 60) -> str:
    """``text`` made file-name safe (``"org/model name"`` -> ``"org_model_name"``), at most ``limit`` chars."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_")[-limit:] or "model"
