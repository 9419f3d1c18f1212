"""Detached Jacobian view: one prompt, its exact local linear map, reconstruction and spectra.

UI only: widgets -> ``get_service().jacobian(...)`` -> figures from :mod:`lldd_core.plots`.
A demo model that is not built yet is built first (:func:`pages._common.ensure_model_ready`).
Errors a user can cause (:class:`~lldd_core.errors.LLDDError`) show as ``st.error``; the last
good result stays in session state, so widget changes and reruns keep showing it.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import streamlit as st

from lldd_core.errors import LLDDError
from lldd_core.jacobian_analysis import JacobianResult
from lldd_core.models import ModelSpec
from lldd_core.plots import reconstruction_scatter, spectrum_figure, token_contribution_figure
from lldd_core.results import to_jsonable
from lldd_core.service import get_service
from pages._common import Shown, current_spec, ensure_model_ready, format_norm, format_sci, progress_reporter

DEFAULT_PROMPT = "The Golden Gate Bridge is in"
#: Session-state key of the last successful :class:`Shown` result of this page.
RESULT_KEY = "detached_jacobian.last"

EXPLANATION = """
**What is shown.** With the nonlinear factors of the model *detached* (norm scales, activation
ratios `act(z)/z` and attention weights frozen at their values for this input), the output embedding
`y` of the last token is exactly linear in the input embeddings: `y = Σ_i J_i x_i + b`, one matrix
`J_i` per token plus a bias channel `b` (all additive constants). The left scatter checks this identity
dimension by dimension. The *ordinary* Jacobian (right) is the usual derivative of the model; it
describes small changes but does not reconstruct `y`, because the model is not linear. The spectrum
shows each `J_i`'s singular values; the bars show how much each token contributes, `‖J_i x_i‖`.
"""


def model_layers(spec: ModelSpec) -> int | None:
    """The model's number of blocks, or ``None`` after showing why it could not be resolved."""
    try:
        return get_service().info(spec).n_layers
    except LLDDError as err:
        st.error(str(err))
        return None


def request_form(n_layers: int) -> tuple[bool, str, int, bool]:
    """The prompt form; returns (submitted, prompt, layer, final_norm)."""
    with st.form("detached_jacobian_form", border=True):
        prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, key="dj_prompt", height=90)
        c1, c2 = st.columns([1, 1], vertical_alignment="bottom")
        layer = c1.number_input(
            f"Layer (1–{n_layers})",
            min_value=1,
            max_value=n_layers,
            value=n_layers,
            step=1,
            key=f"dj_layer_of_{n_layers}",  # a model with another depth gets a fresh widget, never an out-of-range value
            help="Take the output after this many transformer blocks (the last one by default).",
        )
        final_norm = c2.checkbox(
            "Apply final norm",
            value=True,
            key="dj_final_norm",
            help="Pass the residual stream through the model's final norm before reading y.",
        )
        submitted = st.form_submit_button("Compute", type="primary", key="dj_compute")
    return submitted, prompt, int(layer), bool(final_norm)


def compute(spec: ModelSpec, prompt: str, layer: int, final_norm: bool) -> Shown | None:
    """Run the analysis with a live status box; ``None`` (after an ``st.error``) if the user must fix something."""
    failure: LLDDError | None = None
    with st.status("Computing detached Jacobian…", expanded=True) as status:
        bar = st.progress(0.0, text="Resolving the model and tokenizing")
        try:
            computed = get_service().jacobian(
                spec, prompt, layer=layer, final_norm=final_norm, progress=progress_reporter(bar)
            )
        except LLDDError as err:
            failure = err
            status.update(label="Could not compute the detached Jacobian", state="error", expanded=False)
        else:
            bar.progress(1.0, text="Done")
            source = "Loaded from cache" if computed.cache_hit else f"Computed in {computed.result.elapsed_s:.2f} s"
            status.update(label=f"Detached Jacobian ready — {source}", state="complete", expanded=False)
    if failure is not None:
        st.error(str(failure))  # outside the collapsed status box, so it is seen
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


def show_result(shown: Shown) -> None:
    """Everything about one result: request, metrics, figures, tokens, download."""
    r = shown.result
    st.subheader("Result")
    st.caption(
        f"`{r.model}` ({r.family}, {r.dtype}) · layer {r.layer}/{r.n_layers} · "
        f"final norm {'on' if r.final_norm else 'off'} · {len(r.tokens)} tokens · prompt: {shown.prompt!r}"
    )
    show_metrics(shown)
    st.plotly_chart(reconstruction_scatter(r), width="stretch", key="dj_reconstruction")
    left, right = st.columns(2)
    left.plotly_chart(spectrum_figure(r), width="stretch", key="dj_spectrum")
    right.plotly_chart(token_contribution_figure(r), width="stretch", key="dj_contributions")
    with st.expander("What am I looking at?"):
        st.markdown(EXPLANATION)
    st.markdown("**Tokens**")
    st.dataframe(
        token_table(r),
        hide_index=True,
        width="stretch",
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


def main() -> None:
    st.title("Detached Jacobian")
    st.caption("The exact local linear map of the model at one prompt: y = Σ_i J_i x_i + b.")
    spec = current_spec()
    # A demo model is built on first use, visibly, before anything asks for its config.
    n_layers = model_layers(spec) if ensure_model_ready(spec) else None
    if n_layers is not None:
        submitted, prompt, layer, final_norm = request_form(n_layers)
        if submitted:
            shown = compute(spec, prompt, layer, final_norm)
            if shown is not None:
                st.session_state[RESULT_KEY] = shown
    last = st.session_state.get(RESULT_KEY)
    if isinstance(last, Shown) and isinstance(last.result, JacobianResult):
        show_result(last)
    elif n_layers is not None:
        st.info("Enter a prompt and press **Compute**.")


main()
