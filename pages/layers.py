"""Layers view: how one prompt's computation unfolds over depth.

UI only: widgets -> ``get_service().layers(...)`` -> figures and tables from
:mod:`lldd_core.plots.spectra`: singular values and stable ranks of every layer's views, the
emergence of the final top directions, and the emergence table of decoded tokens (layers x input
tokens, as in the paper's tables) with highlighted words. A demo model that is not built yet is
built first; errors a user can cause show as ``st.error`` and the last good result stays on screen.
"""

from __future__ import annotations

import html

import streamlit as st

from lldd_core.analysis.layers import LayersResult
from lldd_core.analysis.settings import SPECTRUM_METHODS as METHODS
from lldd_core.forward.views import SITE_LABELS, SITES
from lldd_core.layering import depth
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.spectra import (
    HIGHLIGHT_TEXT,
    SPACES,
    column_label,
    emergence_figure,
    emergence_table,
    file_slug,
    highlight_colors,
    highlight_table,
    matched_word,
    parse_words,
    singular_value_heatmap,
    stable_rank_figure,
    stable_rank_table,
)
from lldd_core.ranges import TOP_K
from lldd_core.service import get_service
from lldd_core.store.export import csv_text
from pages.common.forms import decode_input, prompt_area, top_k_input, view_start
from pages.common.link import fields, replaying
from pages.common.nav import run_view
from pages.common.ui import Shown, chart, current_theme, format_sci, kept, not_converged, plural, run_with_status, table

DEFAULT_PROMPT = "The Golden Gate Bridge is in"
#: Session-state key of the last successful :class:`Shown` result of this page.
RESULT_KEY = "layers.last"
#: Ordinal names of the decoded singular vectors (the result keeps the top three).
VECTOR_NAMES = ("1st (top)", "2nd", "3rd")

LENS_HELP = (
    "On: every intermediate output passes through the model's final norm before it is analysed and "
    "decoded (the logit lens), so it lives where the unembedding reads. Off: the raw residual stream or term."
)


def explanation() -> str:
    """What each view is and what the figures measure (markdown)."""
    views = "\n".join(f"- **{site}**: {SITE_LABELS[site]}" for site in SITES)
    return f"""
For every depth and input token `i`, each *view* is a linear map `J_i` of the detached model, from
an input to an output of the last token:

{views}

(`x_l` is the residual stream after `l` blocks, `l = 0..L`: `x_0` the embeddings, `x_L` the last block's
output. Block `b = 0..L−1` reads `x_b` and writes `x_{{b+1}}`; its attention and MLP terms are what it adds to
the stream, as functions of the input embeddings `x_0`. The cumulative view is numbered by its layer `l`, the
block views by their block `b`.) With the **logit lens** option the output passes through the
model's final norm before it is decoded (the reference's convention); without it the raw stream or term is
analysed. The **heatmap** shows the top singular values of one view over layers, the **stable rank**
`‖J_i‖²_F / σ_1²` its effective number of directions. **Emergence** `‖U_Lᵀ u_1‖` measures how much of a
view's top output direction lies in the span of the final layer's top-k output directions (1: the final
computation has emerged). The **emergence table** decodes one singular vector per layer and token: `U` (output
space) by the unembedding's logits, `V` (input space) by cosine similarity to the input embeddings.
"""


def request_form(d: int) -> tuple[bool, str, int, int, list[str], bool, str]:
    """The prompt form (``d``: the hidden size); returns (submitted, prompt, k, decoded tokens, sites, lens, method)."""
    with st.form("layers_form", border=True):
        prompt = prompt_area("ly_prompt", DEFAULT_PROMPT)
        c1, c2, c3 = st.columns(3, vertical_alignment="bottom")
        k = top_k_input(
            c1, d, "ly_k",
            help=f"Singular triplets per view, layer and token: {TOP_K.describe(hi=d)}. The emergence measure "
            "uses the final layer's top-k.",
        )
        n_decode = decode_input(c2, "ly_n", 5)
        method = c3.selectbox(
            "Method", METHODS, key="ly_method",
            help="auto: the cheaper of the two. full: every J_i exactly. matrix_free: top-k by products only.",
        )
        sites = st.multiselect(
            "Views", SITES, default=list(SITES), format_func=SITE_LABELS.get, key="ly_sites",
            help="Which linear maps to analyse at every layer (each costs about as much as the others).",
        )
        lens = st.checkbox("Logit lens: decode through the final norm", value=True, key="ly_lens", help=LENS_HELP)
        submitted = st.form_submit_button("Compute", type="primary", key="ly_compute")
    fields("ly_sites", "ly_lens", "ly_method")
    return submitted, prompt, int(k), int(n_decode), list(sites), bool(lens), str(method)


def compute(spec: ModelSpec, prompt: str, k: int, n_decode: int, sites: list[str], lens: bool, method: str) -> Shown | None:
    """Run the analysis with a live status box; ``None`` (after an ``st.error``) if the user must fix something."""
    computed = run_with_status("layer views", lambda progress: get_service().layers(
        spec, prompt, k=k, n_decode=n_decode, lens=lens, method=method, sites=tuple(sites), progress=progress))
    if computed is None:
        return None
    return Shown(computed.result, computed.cache_hit, spec, prompt)


def show_metrics(shown: Shown) -> None:
    """The headline numbers in one row."""
    r = shown.result
    cols = st.columns(5)
    cols[0].metric("Method", r.method, help="full or matrix_free (auto picks one by cost).")
    cols[1].metric("Products", f"{r.n_products:,}", help="Jacobian-vector products over all views and layers.")
    cols[2].metric("Max residual", format_sci(r.max_residual), help="Largest ‖J_i v_j − σ_j u_j‖ / σ_1 over all views.")
    cols[3].metric("Compute time", f"{r.elapsed_s:.2f} s", help="Time of the original computation.")
    cols[4].metric("From cache", "yes" if shown.cache_hit else "no")
    if not r.converged:
        not_converged(r.max_residual, where=" in some view")


def chip(word: str, color: str) -> str:
    """A word on its highlight colour as inline HTML; every non-alphanumeric character becomes an entity,
    so neither markdown nor HTML in the word is interpreted."""
    text = "".join(c if c.isalnum() or c == " " else f"&#{ord(c)};" for c in word)
    return (
        f'<span style="background-color:{color};color:{HIGHLIGHT_TEXT};padding:0.1em 0.45em;'
        f'border-radius:0.3em">{text}</span>'
    )


def show_legend(colors: dict[str, str], cells: list[str]) -> None:
    """Each highlighted word's colour and in how many cells it occurs."""
    parts = []
    for word, color in colors.items():
        count = sum(matched_word(cell, {word: color}) is not None for cell in cells)
        parts.append(f"{chip(word, color)} {html.escape(plural(count, 'cell'))}")
    st.markdown("Highlighted: " + " &nbsp; ".join(parts), unsafe_allow_html=True)


def show_emergence_table(r: LayersResult, site: str, slug: str) -> None:
    """The emergence table with its controls, highlighted words, legend and CSV download."""
    st.subheader("Emergence table")
    st.caption("Rows: layers; columns: input tokens; each cell: the top tokens of one singular vector of that view.")
    n_vectors = min(len(VECTOR_NAMES), r.k)
    c1, c2, c3 = st.columns([1, 2, 1], vertical_alignment="bottom")
    vector = c1.selectbox(
        "Singular vector j", range(n_vectors), format_func=lambda j: VECTOR_NAMES[j], key=f"ly_vector_of_{n_vectors}"
    )
    space = c2.radio("Decode", list(SPACES), format_func=SPACES.get, horizontal=True, key="ly_space")
    n = c3.number_input(
        "Tokens per cell", min_value=1, max_value=r.n_decode, value=min(3, r.n_decode), step=1,
        key=f"ly_cell_n_of_{r.n_decode}",
    )
    words = parse_words(
        st.text_input(
            "Highlight words", key="ly_highlight", placeholder="e.g. Paris, France",
            help="Comma- or space-separated; a cell is coloured when one of its tokens equals a word (any case).",
        )
    )
    emergence = emergence_table(r, site, vector=int(vector), space=space, n=int(n))
    colors = highlight_colors(words)
    if colors:
        show_legend(colors, [cell for col in emergence.columns[1:] for cell in emergence[col]])
    table(highlight_table(emergence, colors), key="ly_emergence", name=f"emergence_{site}_{space}{int(vector) + 1}")
    c1, c2 = st.columns(2)
    with c1:
        st.download_button(
            "Download emergence table (CSV)", data=lambda: csv_text(emergence),
            file_name=f"emergence_{slug}_{site}_{space}{int(vector) + 1}.csv", mime="text/csv", on_click="ignore",
            key="ly_emergence_csv",
        )
    with c2:
        st.download_button(
            "Download stable ranks (CSV)", data=lambda: csv_text(stable_rank_table(r)),
            file_name=f"stable_rank_{slug}.csv", mime="text/csv", on_click="ignore", key="ly_stable_rank_csv",
        )


def show_result(shown: Shown) -> None:
    """Everything about one result: request, metrics, figures, emergence table, downloads."""
    r = shown.result
    slug = file_slug(r.model)
    st.subheader("Result")
    st.caption(
        f"`{r.model}` ({r.family}, {r.dtype}) · {depth(r.n_layers)} · {len(r.tokens)} tokens · views: "
        f"{', '.join(r.sites)} · logit lens {'on' if r.lens else 'off'} · top {r.k} · prompt: {shown.prompt!r}"
    )
    show_metrics(shown)
    with st.expander("What am I looking at?"):
        st.markdown(explanation())
    T = len(r.tokens)
    c1, c2 = st.columns(2, vertical_alignment="bottom")
    site = c1.selectbox("View", r.sites, format_func=SITE_LABELS.get, key="ly_site")
    token = c2.selectbox(
        "Input token i", range(T), index=T - 1, format_func=lambda i: column_label(i, r.tokens[i]),
        key=f"ly_token_of_{T}",  # a prompt of another length gets a fresh widget
    )
    theme = current_theme()
    site = site if site in r.sites else r.sites[0]  # a kept choice the new result does not have
    left, right = st.columns(2)
    with left:
        chart(singular_value_heatmap(r, site, token, theme=theme), "ly_heatmap", f"singular_values_{slug}_{site}_token{token}")
    with right:
        mean = st.checkbox("Stable rank: mean over tokens", value=False, key="ly_sr_mean")
        chart(stable_rank_figure(r, None if mean else token, theme=theme), "ly_stable_rank",
              f"stable_rank_{slug}_{'mean' if mean else f'token{token}'}")
    chart(emergence_figure(r, site, theme=theme), "ly_emergence_figure", f"emergence_{slug}_{site}")
    show_emergence_table(r, site, slug)


def main() -> None:
    spec, shape = view_start(
        "Layers",
        "How the local linear map of one prompt builds up over depth, view by view.",
    )
    n_layers = shape[0] if shape is not None else None
    if shape is not None:
        st.caption(f"`{spec.model}` has {depth(n_layers)}; every view is analysed at each depth.")
        submitted, prompt, k, n_decode, sites, lens, method = request_form(shape[1])
        if submitted or replaying():
            shown = compute(spec, prompt, k, n_decode, sites, lens, method)
            if shown is not None:
                st.session_state[RESULT_KEY] = shown
    last = kept(RESULT_KEY, LayersResult)
    if last is not None:
        show_result(last)
    elif n_layers is not None:
        st.info("Enter a prompt and press **Compute**.")


run_view(main)  # under app.py, also when Streamlit runs this file directly
