"""Detached Jacobian view: one prompt, its exact local linear map, reconstruction and spectra.

UI only: widgets -> ``get_service().jacobian(...)`` -> figures from :mod:`lldd_core.plots.common`. Below
it, "Spectra and token decodings" runs ``get_service().spectrum(...)`` for the same request (its own
form and progress) -> tables and figures from :mod:`lldd_core.plots.spectra`.
A demo model that is not built yet is built first (:func:`pages.common.build.ensure_model_ready`).
Errors a user can cause (:class:`~lldd_core.errors.LLDDError`) show as ``st.error``; the last
good result stays in session state, so widget changes and reruns keep showing it.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import streamlit as st

from lldd_core.analysis.jacobian import JacobianResult
from lldd_core.analysis.settings import SPECTRUM_METHODS as METHODS
from lldd_core.analysis.spectrum import SpectrumResult
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.common import reconstruction_scatter, spectrum_figure, token_contribution_figure
from lldd_core.plots.spectra import (
    column_label,
    display_token,
    file_slug,
    highlight_colors,
    highlight_table,
    norm_distribution_figure,
    norm_table,
    spectrum_table,
    token_spectrum_table,
)
from lldd_core.ranges import LAYER, TOP_K
from lldd_core.service import get_service
from lldd_core.store.export import csv_text
from lldd_core.store.results import to_jsonable
from pages.common.forms import decode_input, prompt_area, top_k_input, view_start
from pages.common.link import fields, replaying
from pages.common.nav import run_view
from pages.common.ui import (
    Shown,
    chart,
    current_theme,
    format_norm,
    format_sci,
    kept,
    not_converged,
    plural,
    run_with_status,
    table,
)

DEFAULT_PROMPT = "The Golden Gate Bridge is in"
#: Session-state key of the last successful :class:`Shown` result of this page.
RESULT_KEY = "detached_jacobian.last"
#: Session-state key of the last successful spectra (a :class:`Shown` of a SpectrumResult).
SPECTRUM_KEY = "detached_jacobian.spectrum"

EXPLANATION = """
**What is shown.** With the nonlinear factors of the model *detached* (norm scales, activation
ratios `act(z)/z` and attention weights frozen at their values for this input), the output embedding
`y` of the last token is exactly linear in the input embeddings: `y = Σ_i J_i x_i + b`, one matrix
`J_i` per token plus a bias channel `b` (all additive constants). The left scatter checks this identity
dimension by dimension. The *ordinary* Jacobian (right) is the usual derivative of the model; it
describes small changes but does not reconstruct `y`, because the model is not linear. The spectrum
shows each `J_i`'s singular values; the bars show how much each token contributes, `‖J_i x_i‖`.
"""

SPECTRA_EXPLANATION = """
For every input token `i`, the top-k singular triplets `J_i ≈ Σ_j σ_j u_j v_jᵀ`. The left vector
`u_j` lives in the **output space**, decoded by the unembedding's logits `W_U u_j`; the right vector
`v_j` lives in the **input space**, decoded by cosine similarity to the input embeddings. Signs are
fixed so that `u_j · y ≥ 0`; *show opposite sign* decodes `−u_j` and `−v_j` instead. The stable rank
`‖J_i‖²_F / σ_1²` counts the effective number of directions (estimated, with a standard error, on the
matrix-free path). **full** forms every `J_i` (also giving its rows and columns of largest norm);
**matrix_free** finds the top-k directly (short prompts of big models); **streamed** visits every `J_i`
row block by row block without ever holding them (long prompts: memory independent of `T·d²`, rows,
columns and stable ranks exact); **auto** picks the cheapest that fits. **Positions** restricts the
analysis to some input tokens (e.g. `0, 5, -1`; empty: all).
"""


def request_form(n_layers: int) -> tuple[bool, str, int, bool]:
    """The prompt form; returns (submitted, prompt, layer, final_norm)."""
    with st.form("detached_jacobian_form", border=True):
        prompt = prompt_area("dj_prompt", DEFAULT_PROMPT)
        c1, c2 = st.columns([1, 1], vertical_alignment="bottom")
        layer = c1.number_input(
            f"Layer l: output x_l (1–{n_layers})",
            **LAYER.widget(hi=n_layers),
            value=n_layers,
            step=1,
            key=f"dj_layer_of_{n_layers}",  # a model with another depth gets a fresh widget, never an out-of-range value
            help=f"The Jacobian of x_0 → x_l: x_l is the residual stream after l blocks, the input of block l "
            f"(x_{n_layers}, the default, leaves the last block; x_0 → x_0 would be the identity).",
        )
        final_norm = c2.checkbox(
            "Apply final norm",
            value=True,
            key="dj_final_norm",
            help="Pass the residual stream through the model's final norm before reading y.",
        )
        submitted = st.form_submit_button("Compute", type="primary", key="dj_compute")
    fields(f"dj_layer_of_{n_layers}", "dj_final_norm")
    return submitted, prompt, int(layer), bool(final_norm)


def compute(spec: ModelSpec, prompt: str, layer: int, final_norm: bool) -> Shown | None:
    """Run the analysis with a live status box; ``None`` (after an ``st.error``) if the user must fix something."""
    computed = run_with_status("detached Jacobian", lambda progress: get_service().jacobian(
        spec, prompt, layer=layer, final_norm=final_norm, progress=progress))
    if computed is None:
        return None
    return Shown(computed.result, computed.cache_hit, spec, prompt)


def token_table(result: JacobianResult) -> pd.DataFrame:
    """One row per token: position, token text (spaces visible), id, ``‖J_i x_i‖``, stable rank."""
    return pd.DataFrame(
        {
            "position": range(len(result.tokens)),
            "token": [repr(t) for t in result.tokens],
            "id": result.input_ids,
            "‖J_i x_i‖": result.token_contributions,
            "stable rank": result.stable_rank,
        }
    )


def show_metrics(shown: Shown) -> None:
    """The headline numbers in two rows of four."""
    r = shown.result
    row1 = st.columns(4)
    row1[0].metric(
        "Detached reconstruction error",
        format_sci(r.reconstruction_error),
        help="‖y − (Σ_i J_i x_i + b)‖ / ‖y‖ with the detached Jacobians: rounding level means exact.",
    )
    row1[1].metric(
        "Ordinary reconstruction error",
        format_sci(r.plain_reconstruction_error),
        help="The same with the ordinary Jacobians: large, because the model is nonlinear.",
    )
    row1[2].metric(
        "Detached vs normal output",
        format_sci(r.detached_vs_normal),
        help="‖y_detached − y_normal‖ / ‖y_normal‖: detaching must not change the forward pass.",
    )
    row1[3].metric("‖y‖", format_norm(r.output_norm), help="Norm of the output embedding y.")
    row2 = st.columns(4)
    row2[0].metric("Bias channel ‖b‖", format_norm(r.bias_norm), help="b = ∂y/∂s: every additive constant, detached.")
    row2[1].metric("Ordinary ‖b‖", format_norm(r.plain_bias_norm), help="The bias channel of the ordinary Jacobian.")
    row2[2].metric(
        "Compute time",
        f"{r.elapsed_s:.2f} s",
        help="Time of the original computation (a cache hit returns at once).",
    )
    row2[3].metric("From cache", "yes" if shown.cache_hit else "no")


def download_name(result: JacobianResult) -> str:
    """``detached_jacobian_<model>_L<layer>.json`` with the model id made file-name safe."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", result.model.strip("/")).strip("_")[-60:] or "model"
    return f"detached_jacobian_{slug}_L{result.layer}.json"


def figure_name(result: JacobianResult | SpectrumResult, what: str) -> str:
    """File name (no extension) of a figure saved from the plotly toolbar or the export control."""
    return f"{what}_{file_slug(result.model)}_L{result.layer}"


def show_result(shown: Shown) -> None:
    """Everything about one result: request, metrics, figures, tokens, download."""
    r = shown.result
    st.subheader("Result")
    st.caption(
        f"`{r.model}` ({r.family}, {r.dtype}) · output x_{r.layer} (layer {r.layer} of 0..{r.n_layers}) · "
        f"final norm {'on' if r.final_norm else 'off'} · {len(r.tokens)} tokens · prompt: {shown.prompt!r}"
    )
    show_metrics(shown)
    if r.streamed:
        st.info(f"This prompt's Jacobian ({len(r.tokens)} × {r.y.shape[0]}² entries) is past LLDD_MAX_JACOBIAN_GB, so "
                f"it was streamed row block by row block: reconstruction, bias and token shares are exact, the "
                f"spectrum shows each token's top {r.singular_values.shape[1]} singular values.")
    theme = current_theme()
    chart(reconstruction_scatter(r, theme=theme), "dj_reconstruction", figure_name(r, "reconstruction"))
    left, right = st.columns(2)
    with left:
        chart(spectrum_figure(r, theme=theme), "dj_spectrum", figure_name(r, "spectrum"))
    with right:
        chart(token_contribution_figure(r, theme=theme), "dj_contributions", figure_name(r, "contributions"))
    with st.expander("What am I looking at?"):
        st.markdown(EXPLANATION)
    st.markdown("**Tokens**")
    table(
        token_table(r),
        key="dj_tokens",
        name="tokens",
        column_config={
            "‖J_i x_i‖": st.column_config.ProgressColumn(
                "‖J_i x_i‖",
                min_value=0.0,
                max_value=float(max(r.token_contributions.max(initial=0.0), 1e-300)),
                format="%.4g",
            ),
            "stable rank": st.column_config.NumberColumn("stable rank", format="%.3g"),
        },
    )
    st.download_button(
        "Download result (JSON)",
        data=lambda: json.dumps(to_jsonable(r)),  # serialized only when clicked
        file_name=download_name(r),
        mime="application/json",
        on_click="ignore",
        key="dj_download",
    )


# --- spectra and token decodings ------------------------------------------------------------------------
def same_request(spectrum: Shown, shown: Shown) -> bool:
    """Whether ``spectrum`` was computed for the Jacobian request ``shown`` (model, prompt, layer, norm)."""
    s, r = spectrum.result, shown.result
    return (spectrum.spec, spectrum.prompt, s.layer, s.final_norm) == (shown.spec, shown.prompt, r.layer, r.final_norm)


def spectra_form(d: int) -> tuple[bool, int, int, str, str]:
    """The spectra settings (``d``: the hidden size); returns (submitted, k, decoded tokens per vector, method,
    positions text)."""
    with st.form("dj_spectra_form", border=True):
        c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")
        k = top_k_input(c1, d, "dj_spec_k", help=f"Singular triplets per token: {TOP_K.describe(hi=d)}.")
        n_decode = decode_input(c2, "dj_spec_n", 8)
        method = c3.selectbox(
            "Method", METHODS, key="dj_spec_method",
            help="auto: the cheapest that fits. full: every J_i (exact; also rows and columns). "
            "matrix_free: top-k by products only (short prompts of big models). streamed: every J_i row block by "
            "row block, never held (long prompts; rows and columns too).",
        )
        positions = c4.text_input(
            "Positions", key="dj_spec_positions", placeholder="all",
            help="Input token positions i to analyse, comma-separated (negative counts from the end, e.g. 0, 5, -1); "
            "empty: every token.",
        )
        submitted = st.form_submit_button("Compute spectra", key="dj_spec_compute")
    fields("dj_spec_method", "dj_spec_positions")
    return submitted, int(k), int(n_decode), str(method), str(positions)


def compute_spectra(shown: Shown, k: int, n_decode: int, method: str, positions: str = "") -> Shown | None:
    """The spectra of ``shown``'s request with a live status box; ``None`` (after an ``st.error``) on a user error."""
    r = shown.result
    chosen = positions.strip() or None  # the settings parse and check "0, 5, -1" against the prompt
    computed = run_with_status("spectra", lambda progress: get_service().spectrum(
        shown.spec, shown.prompt, layer=r.layer, final_norm=r.final_norm, k=k, n_decode=n_decode, method=method,
        positions=chosen, progress=progress))
    if computed is None:
        return None
    return Shown(computed.result, computed.cache_hit, shown.spec, shown.prompt)


def csv_button(label: str, table: pd.DataFrame, file_name: str, key: str) -> None:
    """A download button for ``table`` as CSV (serialized only when clicked)."""
    st.download_button(
        label, data=lambda: csv_text(table), file_name=file_name, mime="text/csv", on_click="ignore", key=key
    )


def show_spectrum(spectrum: Shown) -> None:
    """Decoded spectra of one request: per-token table, sign toggle, stable ranks, rows and columns."""
    s = spectrum.result
    slug = f"{file_slug(s.model)}_L{s.layer}"
    st.caption(
        f"output x_{s.layer} (layer {s.layer} of 0..{s.n_layers}) · final norm {'on' if s.final_norm else 'off'} · top {s.k} · "
        f"{plural(s.n_decode, 'token')} per vector"
    )
    cols = st.columns(5)
    cols[0].metric("Next token", display_token(s.next_token), help="The model's greedy next token: argmax of W_U y.")
    cols[1].metric("Spectrum method", s.method + (f" ({s.passes} pass{'' if s.passes == 1 else 'es'})" if s.passes else ""),
                   help="full, matrix_free or streamed (auto picks one by cost and memory).")
    cols[2].metric("Products", f"{s.n_products:,}", help="Jacobian-vector products the SVD used.")
    cols[3].metric(
        "Max residual", format_sci(s.max_residual), help="Largest ‖J_i v_j − σ_j u_j‖ / σ_1 over tokens and pairs."
    )
    cols[4].metric("Spectra from cache", "yes" if spectrum.cache_hit else "no")
    if not s.converged:
        not_converged(s.max_residual, what="singular values and their decodings")
    with st.expander("How to read these tables"):
        st.markdown(SPECTRA_EXPLANATION)
    rows = s.rows
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    token = c1.selectbox(
        "Input token i", rows, index=len(rows) - 1, format_func=lambda i: column_label(i, s.tokens[i]),
        key=f"dj_spec_token_of_{len(s.tokens)}_{len(rows)}",  # another prompt or set of positions: a fresh widget
    )
    negative = c2.toggle("Show opposite sign", value=False, key="dj_spec_negative",
                         help="Decode −u_j and −v_j: the tokens each direction pushes down.")
    colors = highlight_colors([display_token(s.next_token)])
    st.markdown(f"**Top-{s.k} singular pairs of J_{token}** (cells with the next token are highlighted)")
    pairs = spectrum_table(s, token, negative=negative)
    table(highlight_table(pairs, colors), key="dj_spec_table", name=f"spectrum_token{token}{'_neg' if negative else ''}")
    csv_button("Download table (CSV)", pairs, f"spectrum_{slug}_token{token}{'_neg' if negative else ''}.csv",
               "dj_spec_table_csv")
    st.markdown("**Stable rank per token**" + (" (estimated, ± standard error)" if s.method == "matrix_free" else ""))
    per_token = token_spectrum_table(s)
    table(highlight_table(per_token, {}), key="dj_spec_tokens", name="stable_rank_per_token")
    csv_button("Download stable ranks (CSV)", per_token, f"stable_rank_{slug}.csv", "dj_spec_tokens_csv")
    if not s.has_rows:
        st.caption("Rows and columns of largest norm need every entry of J_i: choose the full or streamed method.")
        return
    for which, what in (("rows", "input space, cosine"), ("columns", "output space, logits")):  # full width each:
        st.markdown(f"**{which.capitalize()} of J_{token} of largest norm** ({what})")  # half would cut the tokens
        extremes = norm_table(s, token, which)
        table(highlight_table(extremes, colors), key=f"dj_spec_{which}", name=f"{which}_token{token}")
        csv_button(f"Download {which} (CSV)", extremes, f"{which}_{slug}_token{token}.csv", f"dj_spec_{which}_csv")
    chart(norm_distribution_figure(s, token, theme=current_theme()), "dj_spec_norms", figure_name(s, f"norms_token{token}"))


def spectra_section(shown: Shown) -> None:
    """The spectra of the shown request: settings, computation, and the last matching result."""
    st.divider()
    st.subheader("Spectra and token decodings")
    r = shown.result
    st.caption(
        f"The top singular vectors of every J_i for the request above (output x_{r.layer}, final norm "
        f"{'on' if r.final_norm else 'off'}), decoded to tokens."
    )
    submitted, k, n_decode, method, positions = spectra_form(int(r.y.shape[0]))  # d_out = d_in = d
    if submitted or replaying():
        spectrum = compute_spectra(shown, k, n_decode, method, positions)
        if spectrum is not None:
            st.session_state[SPECTRUM_KEY] = spectrum
    last = kept(SPECTRUM_KEY, SpectrumResult)
    if last is not None and same_request(last, shown):
        show_spectrum(last)
    else:
        st.info("Press **Compute spectra** to decode the singular vectors of this request.")


def main() -> None:
    spec, shape = view_start(
        "Detached Jacobian",
        "The exact local linear map of the model at one prompt: y = Σ_i J_i x_i + b.",
    )
    n_layers = None if shape is None else shape[0]
    if n_layers is not None:
        submitted, prompt, layer, final_norm = request_form(n_layers)
        if submitted or replaying():
            shown = compute(spec, prompt, layer, final_norm)
            if shown is not None:
                st.session_state[RESULT_KEY] = shown
    last = kept(RESULT_KEY, JacobianResult)
    if last is not None:
        show_result(last)
        spectra_section(last)
    elif n_layers is not None:
        st.info("Enter a prompt and press **Compute**.")


run_view(main)  # under app.py, also when Streamlit runs this file directly
