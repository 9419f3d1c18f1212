"""Gain curves view: where in depth a concept injection moves the concept readout most.

UI only: a concept dataset (registered or uploaded, :mod:`pages.common.datasets`) and settings ->
``get_service().gains(...)`` / ``gains_ablation(...)`` -> figures and tables from
:mod:`lldd_core.plots.gains`. Predicted (LLV surrogate), measured (injection) and exact linear gain
curves per evaluation prompt, their agreement, and ablations over the order, ``ε`` and the basis
complement. Errors a user can cause show as ``st.error``; the last good results stay on screen.
"""

from __future__ import annotations

import streamlit as st

from lldd_core.analysis.ablation import GainsAblation, ablation_values
from lldd_core.analysis.gains import GainsResult
from lldd_core.analysis.settings import COMPLEMENTS, MODES, GainsSettings, SplitSizes
from lldd_core.concepts.data import ConceptData
from lldd_core.layering import depth
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.gains import (
    CURVES,
    SPREAD_LABEL,
    VARY_LABELS,
    ablation_figure,
    ablation_table,
    agreement_histogram,
    best_layers,
    curves_table,
    direction_norms_figure,
    format_corr,
    mean_curves_figure,
    prompt_curves_figure,
    prompt_table,
    splits_line,
)
from lldd_core.plots.spectra import file_slug
from lldd_core.ranges import EPS
from lldd_core.service import get_service
from lldd_core.store.export import csv_text
from pages.common.datasets import dataset_picker
from pages.common.forms import eps_input, n_eval_input, order_input, seed_input, split_size_inputs, view_start
from pages.common.link import fields, replaying
from pages.common.nav import run_view
from pages.common.ui import Shown, chart, current_theme, kept, plural, result_or_hint, run_with_status, table

#: Session-state keys: the last successful result (a :class:`Shown`) and the settings it was asked with.
RESULT_KEY = "gains.last"
SETTINGS_KEY = "gains.last_settings"
#: The last ablation of each kind, by ``vary``.
ABLATION_KEY = "gains.ablation.{}"

COMPLEMENT_LABELS = {
    "krylov": "krylov (depth-Krylov, default)",
    "random": "random (ablation)",
    "pca": "pca (principal directions, ablation)",
}
MODE_LABELS = {"prompt": "prompt (own Jacobians)", "population": "population (mean model)"}
#: Tab titles of the ablations, in order.
ABLATION_TABS = {"order": "Order d", "eps": "ε", "complement": "Complement"}
ABLATION_NOUNS = {
    "order": "ablation over the order d", "eps": "ablation over ε", "complement": "ablation over the complement",
}

EXPLANATION = f"""
The **concept direction** `v_l` at each layer is the normalized difference of the two classes' mean last-token
states on the *concept* split. An injection `x_k ← x_k + u·v_k` at layer `k` (last token, before block `k`)
changes the readout `v_Lᵀ x_L` (after the last block, before the final norm); the **gain** at `k` is that change per
unit `u`. For every *evaluation* prompt:

- **predicted** — the low-order LLV surrogate: `e_1ᵀ Ā_(L-1) ⋯ Ā_(k+1) Ā_k e_1` with reduced maps
  `Ā_l = P_(l+1)ᵀ A_l P_l` on bases `P_l` of order d whose first column is `v_l`, built from the *operating* split
  (complement: depth-Krylov, random or PCA). *prompt* mode uses each prompt's own Jacobians `A_l`; *population*
  mode the operating prompts' mean reduced model (one curve for every prompt).
- **measured** — the readout change over ε in the full nonlinear model (an injection of size ε).
- **exact** — `∂(v_Lᵀ x_L)/∂x_k · v_k` by one backward pass: the limit of *measured* as ε → 0 and of
  *predicted* as the order reaches the hidden size.

**Agreement**: per prompt, the Spearman (rank) and Pearson (linear) correlation over layers of the predicted and
measured curves; the metrics show their mean over prompts and the correlation of the mean curves (n/a: a curve is
constant or has one point). **Best layer**: where a mean curve peaks. Bands and error bars: {SPREAD_LABEL}.
"""


def settings_form(d: int, ready: bool) -> tuple[bool, GainsSettings]:
    """The settings form (defaults: :class:`~lldd_core.analysis.settings.GainsSettings`'s); returns (submitted, the settings)."""
    G = GainsSettings
    with st.form("gains_form", border=True):
        sizes = list(split_size_inputs("gn"))
        c1, c2, c3, c4 = st.columns(4)
        order = order_input(
            c1, d, "gn_order", value=G.default("order"),
            help=f"Columns of each layer's basis P_l (1..hidden size {d}); at the hidden size the prediction is exact.",
        )
        complement = c2.selectbox(
            "Complement", COMPLEMENTS, format_func=COMPLEMENT_LABELS.get, key="gn_complement",
            help="How P_l is completed after v_l: krylov carries earlier layers' bases through the operating prompts' "
            "mean Jacobians; random and pca (the operating states' principal directions) are ablations.",
        )
        eps = eps_input(
            c3, "gn_eps", G.default("eps"),
            help=f"Size of the injection for the measured gains: {EPS.describe()}; 0.01..0.5 is the useful range.",
        )
        n_eval = n_eval_input(
            c4, "gn_n_eval", G.default("n_eval"),
            help="How many prompts of the evaluation split get curves (it holds 2 × the evaluation size per class).",
        )
        c1, c2 = st.columns(2)
        mode = c1.radio(
            "Mode", MODES, format_func=MODE_LABELS.get, horizontal=True, key="gn_mode",
            help="prompt: each prompt's predicted curve from its own Jacobians on the shared bases. population: "
            "one curve from the operating prompts' mean reduced model.",
        )
        seed = seed_input(c2, "gn_seed", help="Seed of the splits and of random bases.", value=G.default("seed"))
        submitted = st.form_submit_button("Compute gain curves", type="primary", key="gn_compute", disabled=not ready)
    fields("gn_mode", "gn_complement", "gn_include_flagged")
    settings = GainsSettings(order=int(order), eps=float(eps), complement=str(complement), n_eval=int(n_eval),
                             mode=str(mode), sizes=SplitSizes(*(int(n) for n in sizes)), seed=int(seed))
    return submitted, settings


def compute(spec: ModelSpec, dataset: str | ConceptData, settings: GainsSettings) -> Shown | None:
    """Run the analysis with a live status box; ``None`` (after an ``st.error``) if the user must fix something."""
    computed = run_with_status(
        "gain curves", lambda progress: get_service().gains(spec, dataset, settings, progress=progress))
    if computed is None:
        return None
    return Shown(computed.result, computed.cache_hit, spec, computed.result.dataset)


def describe_settings(r: GainsResult | GainsAblation) -> str:
    """The request in one caption line."""
    return (f"`{r.model}` ({r.family}, {r.dtype}, {r.n_params / 1e6:.2f}M parameters) · dataset `{r.dataset}` "
            f"({r.classes[0]} vs {r.classes[1]}; {r.source}) · order {r.order} · {r.complement} · ε {r.eps:g} · "
            f"{r.mode} mode · {plural(len(r.prompts), 'evaluation prompt')} · layers {list(r.layers)}")


def describe_form(s: GainsSettings) -> str:
    """The form's settings in one phrase."""
    return (f"order {s.order} · {s.complement} · ε {s.eps:g} · {plural(s.n_eval, 'evaluation prompt')} · "
            f"{s.mode} mode · splits {'/'.join(map(str, s.sizes))} per class · seed {s.seed}")


def show_metrics(shown: Shown, include_flagged: bool = False) -> None:
    """Agreement (flagged layers out unless ``include_flagged``) and best layers in two rows."""
    r = shown.result
    agree = r.agreement_all_layers if include_flagged else {
        k: getattr(r, k) for k in ("mean_spearman", "mean_pearson", "spearman_of_means", "pearson_of_means")}
    row = st.columns(5)
    row[0].metric("Mean Spearman", format_corr(agree["mean_spearman"]), help="Mean over prompts of the rank "
                  "correlation of predicted and measured gains over layers.")
    row[1].metric("Mean Pearson", format_corr(agree["mean_pearson"]), help="Mean over prompts of the linear correlation.")
    row[2].metric("Spearman of mean curves", format_corr(agree["spearman_of_means"]),
                  help="Rank correlation of the mean predicted and mean measured curves.")
    row[3].metric("Pearson of mean curves", format_corr(agree["pearson_of_means"]))
    row[4].metric("From cache", "yes" if shown.cache_hit else "no")
    row = st.columns(5)
    row[0].metric("Best layer: predicted", r.best_layer_predicted, help="Where the mean predicted curve peaks.")
    row[1].metric("Best layer: measured", r.best_layer_measured)
    row[2].metric("Best layer: exact", r.best_layer_exact)
    row[3].metric("Compute time", f"{r.elapsed_s:.2f} s", help="Time of the original computation.")
    row[4].metric("Evaluation prompts", len(r.prompts))


def show_prompt(r: GainsResult, slug: str) -> None:
    """One prompt's three curves, its agreement and best layers."""
    P = len(r.prompts)
    i = st.selectbox(
        "Evaluation prompt", range(P), format_func=lambda j: f"{j}: {r.prompts[j][:100]}",
        key=f"gn_prompt_of_{P}",  # another number of prompts gets a fresh widget
    )
    left, right = st.columns([4, 1])
    with left:
        chart(prompt_curves_figure(r, int(i), theme=current_theme()), "gn_prompt_chart", f"gains_{slug}_prompt{i}")
    with right:
        st.metric("Prompt Spearman", format_corr(float(r.spearman[i])))
        st.metric("Prompt Pearson", format_corr(float(r.pearson[i])))
        best = " / ".join(str(best_layers(r, c)[i]) for c in CURVES)
        st.caption(f"Best layer (predicted / measured / exact): {best}")
    with st.expander("Prompt text"):
        st.text(r.prompts[i])


def show_result(shown: Shown, settings: GainsSettings | None) -> None:
    """Everything about one result: request, splits, metrics, figures, the per-prompt table and downloads."""
    r = shown.result
    slug = file_slug(f"{r.model}_{r.dataset}")
    st.subheader("Result")
    st.caption(describe_settings(r))
    line, shrunk = splits_line(r.split_sizes, settings.sizes if isinstance(settings, GainsSettings) else None)
    if shrunk:
        st.info(f"Split sizes: {line}.", icon=":material/compress:")
    else:
        st.caption(f"Split sizes: {line}.")
    flagged = [k for k in r.flagged_layers if k in r.layers]
    include = False
    if flagged:
        include = st.toggle("Include flagged layers in the agreement", value=False, key="gn_include_flagged",
                            help="Flagged layers' concept directions are too weak to trust; by default they are "
                                 "left out of every agreement figure (the curves still show them, shaded).")
        st.caption(f"Flagged {plural(len(flagged), 'layer')} {', '.join(map(str, flagged))}: the class-mean "
                   "difference there, relative to the state's size, is under 5% of the concept's strongest "
                   "layer's, so its direction is not trusted; agreement figures "
                   f"{'include' if include else 'leave out'} {'it' if len(flagged) == 1 else 'them'}.")
    show_metrics(shown, include)
    with st.expander("What are predicted, measured and exact gains?"):
        st.markdown(EXPLANATION)
    theme = current_theme()
    chart(mean_curves_figure(r, theme=theme), "gn_mean_chart", f"gains_{slug}_mean")
    chart(direction_norms_figure(r, theme=theme), "gn_norms_chart", f"gains_{slug}_direction_norms")
    st.subheader("Per prompt")
    show_prompt(r, slug)
    chart(agreement_histogram(r, theme=theme), "gn_histogram", f"gains_{slug}_agreement")
    prompts = prompt_table(r)
    table(prompts, key="gn_prompt_table", name="prompts",
          column_config={"Spearman": st.column_config.NumberColumn(format="%.3f"),
                         "Pearson": st.column_config.NumberColumn(format="%.3f")})
    c1, c2 = st.columns(2)
    c1.download_button(
        "Download per-prompt table (CSV)", data=lambda: csv_text(prompts),
        file_name=f"gains_{slug}_prompts.csv", mime="text/csv", on_click="ignore", key="gn_prompts_csv",
    )
    c2.download_button(
        "Download all curves (CSV)", data=lambda: csv_text(curves_table(r)),
        file_name=f"gains_{slug}_curves.csv", mime="text/csv", on_click="ignore", key="gn_curves_csv",
    )


def show_ablation(shown: Shown) -> None:
    """One ablation's figure, table and CSV download."""
    ab = shown.result
    slug = file_slug(f"{ab.model}_{ab.dataset}_{ab.vary}")
    origin = "from cache" if shown.cache_hit else f"computed in {ab.elapsed_s:.2f} s"
    st.caption(f"{describe_settings(ab)} · {origin}")
    chart(ablation_figure(ab, theme=current_theme()), f"gn_ablation_chart_{ab.vary}", f"gains_ablation_{slug}")
    ablation = ablation_table(ab)
    table(ablation, key=f"gn_ablation_table_{ab.vary}", name=f"ablation_{ab.vary}")
    st.download_button(
        "Download ablation table (CSV)", data=lambda: csv_text(ablation), file_name=f"gains_ablation_{slug}.csv",
        mime="text/csv", on_click="ignore", key=f"gn_ablation_csv_{ab.vary}",
    )


def ablation_tab(vary: str, spec: ModelSpec, dataset: str | ConceptData | None, settings: GainsSettings | None,
                 d: int | None) -> None:
    """A button that sweeps ``vary`` with the current settings, and the last sweep of it."""
    if d is not None and settings is not None:
        values = ablation_values(vary, d)
        st.caption(f"Sweeps {VARY_LABELS[vary]} over {', '.join(map(str, values))}, everything else as in the form "
                   f"above when it was last submitted: {describe_form(settings)}. The figure marks the form's "
                   f"{VARY_LABELS[vary]}.")
    ready = d is not None and dataset is not None and settings is not None
    if st.button(f"Run {ABLATION_NOUNS[vary]}", key=f"gn_ablate_{vary}", disabled=not ready) and ready:
        computed = run_with_status(ABLATION_NOUNS[vary], lambda progress: get_service().gains_ablation(
            spec, dataset, vary, settings=settings, progress=progress))
        if computed is not None:
            st.session_state[ABLATION_KEY.format(vary)] = Shown(computed.result, computed.cache_hit, spec,
                                                                computed.result.dataset)
    last = kept(ABLATION_KEY.format(vary), GainsAblation)
    if last is not None and last.result.vary == vary:
        show_ablation(last)


def main() -> None:
    spec, shape = view_start(
        "Gain curves",
        "Where in depth does injecting a concept direction move the concept's readout most? Predicted by a "
        "low-order linear layer-varying surrogate, measured in the full model, and exact to first order.",
    )
    dataset: str | ConceptData | None = None
    settings: GainsSettings | None = None
    if shape is not None:
        n_layers, d = shape
        st.caption(f"`{spec.model}`: {depth(n_layers)}, hidden size {d}.")
        dataset = dataset_picker("gn_ds")
        submitted, settings = settings_form(d, dataset is not None)
        if (submitted or replaying()) and dataset is not None:
            shown = compute(spec, dataset, settings)
            if shown is not None:
                st.session_state[RESULT_KEY] = shown
                st.session_state[SETTINGS_KEY] = settings
    result_or_hint(kept(RESULT_KEY, GainsResult), shape is not None,
                   lambda last: show_result(last, st.session_state.get(SETTINGS_KEY)),
                   "Choose a concept dataset and press **Compute gain curves**.")
    if shape is not None or any(isinstance(st.session_state.get(ABLATION_KEY.format(v)), Shown) for v in ABLATION_TABS):
        st.subheader("Ablations")
        # keyed and tracked, so the open tab survives the rerun its own button causes
        tabs = st.tabs(list(ABLATION_TABS.values()), key="gn_ablation_tabs", on_change="rerun")
        for vary, tab in zip(ABLATION_TABS, tabs):
            with tab:
                ablation_tab(vary, spec, dataset, settings, None if shape is None else shape[1])


run_view(main)  # under app.py, also when Streamlit runs this file directly
