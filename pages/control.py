"""Control view: how much energy each multi-layer schedule needs to move a concept readout by Δy.

UI only: a concept dataset (:mod:`pages.common.datasets`), target shifts and settings ->
``get_service().control(...)`` -> figures and tables from :mod:`lldd_core.plots.control`. The
least-energy LLV schedule against uniform and single-layer heuristics, each scaled by bisection until
the full model's mean readout change reaches the target. Errors a user can cause show as
``st.error``; the last good result stays on screen.
"""

from __future__ import annotations

import streamlit as st

from lldd_core.analysis.control import MAX_SCALE, ControlResult
from lldd_core.analysis.settings import COMPLEMENTS, ControlSettings, SplitSizes
from lldd_core.concepts.data import ConceptData
from lldd_core.errors import LLDDError
from lldd_core.layering import depth
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.control import (
    SCHEDULE_LINES,
    control_table,
    energy_figure,
    gains_figure,
    parse_targets,
    relative_energy_figure,
    schedule_figure,
    schedules_table,
)
from lldd_core.plots.gains import splits_line
from lldd_core.plots.spectra import file_slug
from lldd_core.ranges import MAX_TARGETS, TARGET, TOL
from lldd_core.service import get_service
from lldd_core.store.export import csv_text
from pages.common.datasets import dataset_picker
from pages.common.forms import n_eval_input, order_input, seed_input, split_size_inputs, view_start
from pages.common.link import fields, replaying
from pages.common.nav import run_view
from pages.common.ui import Shown, chart, current_theme, kept, plural, result_or_hint, run_with_status, table

#: Session-state keys: the last successful result (a :class:`Shown`) and the split sizes it was asked with.
RESULT_KEY = "control.last"
SIZES_KEY = "control.last_sizes"
DEFAULT_TARGETS = "0.5, 1, 2"
SCHEDULE_VIEWS = {"validated": "validated (full model)", "surrogate": "surrogate"}

EXPLANATION = f"""
Scalar controls `u_l` along the concept directions `v_l` (injection `x_l ← x_l + u_l·v_l` at the last token, before
block `l`) move the readout `y = v_Lᵀ x_L` (after the last block, before the final norm) by `δy ≈ hᵀu` to first order,
with `h` the LLV surrogate's predicted gains (the operating prompts' mean reduced model). For every target `Δy`
each schedule below reaches `Δy` exactly in the surrogate; it is then **validated in the full model**: its amplitude
is scaled (bracketing, then bisection) until the mean readout change over the evaluation prompts lies within the
tolerance of `Δy`. Its **energy** is `‖u‖²` of the scaled schedule. A schedule that cannot reach the target within
{MAX_SCALE:g}× the surrogate's amplitude (or whose layer has zero gain) is marked *not reached*.
"""


def settings_form(d: int, ready: bool) -> tuple[bool, str, ControlSettings]:
    """The settings form (defaults: :class:`~lldd_core.analysis.settings.ControlSettings`'s, but several targets
    to compare); returns (submitted, the targets' text, the other settings)."""
    C = ControlSettings
    with st.form("control_form", border=True):
        targets = st.text_input(
            "Target shifts Δy", value=DEFAULT_TARGETS, key="ct_targets",
            help=f"Up to {MAX_TARGETS} readout changes to reach, separated by commas (e.g. 0.5, 1, 2; negative values "
            f"push towards the other class), each {TARGET.describe()}.",
        )
        sizes = list(split_size_inputs("ct"))
        c1, c2, c3, c4, c5 = st.columns(5)
        order = order_input(c1, d, "ct_order", help=f"Columns of each layer's basis P_l (1..hidden size {d}).",
                            value=C.default("order"))
        complement = c2.selectbox(
            "Complement", COMPLEMENTS, key="ct_complement",
            help="How each basis P_l is completed after v_l: depth-Krylov (default), random or PCA.",
        )
        n_eval = n_eval_input(c3, "ct_n_eval", C.default("n_eval"),
                              help="The full-model readout change is the mean over this many evaluation prompts.")
        tol = c4.number_input(
            "Tolerance", **TOL.widget(), value=C.default("tol"), step=1e-3, format="%.4g", key="ct_tol",
            help="A schedule reaches Δy when the mean readout change is within tolerance × |Δy| of it.",
        )
        seed = seed_input(c5, "ct_seed", help="Seed of the splits, of random bases and of the random schedule's layer.",
                          value=C.default("seed"))
        submitted = st.form_submit_button("Compute schedules", type="primary", key="ct_compute", disabled=not ready)
    fields("ct_targets", "ct_tol", "ct_complement")
    settings = ControlSettings(order=int(order), complement=str(complement), n_eval=int(n_eval),
                               sizes=SplitSizes(*(int(n) for n in sizes)), seed=int(seed), tol=float(tol))
    return submitted, targets, settings


def compute(spec: ModelSpec, dataset: str | ConceptData, targets_text: str, settings: ControlSettings) -> Shown | None:
    """Parse the targets and run the analysis with a live status box; ``None`` (after an ``st.error``) on a user error."""
    try:
        targets = parse_targets(targets_text)
    except LLDDError as err:
        st.error(str(err))
        return None
    computed = run_with_status(
        "control schedules", lambda progress: get_service().control(spec, dataset, targets, settings, progress=progress))
    if computed is None:
        return None
    return Shown(computed.result, computed.cache_hit, spec, computed.result.dataset)


def describe(r: ControlResult) -> str:
    """The request in one caption line."""
    return (f"`{r.model}` ({r.family}, {r.dtype}, {r.n_params / 1e6:.2f}M parameters) · dataset `{r.dataset}` "
            f"({r.classes[0]} vs {r.classes[1]}; {r.source}) · order {r.order} · {r.complement} · "
            f"{plural(r.n_prompts, 'evaluation prompt')} · tolerance {r.tol:g} · layers with a direction "
            f"{list(r.layers)}")


def show_metrics(shown: Shown) -> None:
    r = shown.result
    reached = int(r.reached.sum())
    row = st.columns(6)
    row[0].metric("Targets", len(r.targets))
    row[1].metric("Reached", f"{reached} / {r.reached.size}",
                  help="Schedule × target pairs whose full-model shift came within the tolerance.")
    # short enough for a sixth of the page: "±5%" (a "±0.05·|Δy|" value was cut to "±0.05·…")
    row[2].metric("Tolerance", f"±{100 * r.tol:.3g}%",
                  help=f"A schedule reaches Δy when its mean readout change lies within ±{r.tol:g}·|Δy| of it.")
    row[3].metric("Evaluation prompts", r.n_prompts)
    row[4].metric("Compute time", f"{r.elapsed_s:.2f} s", help="Time of the original computation.")
    row[5].metric("From cache", "yes" if shown.cache_hit else "no")


def show_result(shown: Shown, sizes: tuple | None) -> None:
    """Everything about one result: request, metrics, figures, the table and downloads."""
    r: ControlResult = shown.result
    slug = file_slug(f"{r.model}_{r.dataset}")
    st.subheader("Result")
    st.caption(describe(r))
    line, shrunk = splits_line(r.split_sizes, sizes)
    (st.info if shrunk else st.caption)(f"Split sizes: {line}.")
    show_metrics(shown)
    theme = current_theme()
    left, right = st.columns(2)
    with left:
        chart(energy_figure(r, theme=theme), "ct_energy_chart", f"control_{slug}_energy")
    with right:
        chart(relative_energy_figure(r, theme=theme), "ct_ratio_chart", f"control_{slug}_ratio")
    st.subheader("Schedules over layers")
    c1, c2 = st.columns([2, 1])
    N = len(r.targets)
    j = c1.selectbox("Target", range(N), format_func=lambda i: f"Δy = {r.targets[i]:g}", key=f"ct_target_of_{N}")
    view = c2.radio("Schedules", list(SCHEDULE_VIEWS), format_func=SCHEDULE_VIEWS.get, horizontal=True,
                    key="ct_schedule_view",
                    help="validated: amplitude × schedule as applied in the full model; surrogate: the schedule "
                    "that reaches Δy in the LLV surrogate.")
    chart(schedule_figure(r, int(j), surrogate=view == "surrogate", theme=theme), "ct_schedule_chart",
          f"control_{slug}_schedules_{j}")
    chart(gains_figure(r, theme=theme), "ct_gains_chart", f"control_{slug}_gains")
    st.subheader("Per schedule and target")
    rows = control_table(r)
    table(rows, key="ct_table", name="schedules_and_targets",
          column_config={c: st.column_config.NumberColumn(format="%.4g") for c in (
              "amplitude", "energy ‖u‖²", "energy / LLV", "surrogate energy", "achieved shift", "relative miss")})
    st.caption("Energy is empty where the schedule did not reach the target (the achieved shift is then the closest "
               "found). Relative miss = |achieved − Δy| / |Δy|.")
    c1, c2 = st.columns(2)
    c1.download_button(
        "Download table (CSV)", data=lambda: csv_text(rows), file_name=f"control_{slug}.csv",
        mime="text/csv", on_click="ignore", key="ct_table_csv",
    )
    c2.download_button(
        "Download schedules per layer (CSV)", data=lambda: csv_text(schedules_table(r)),
        file_name=f"control_{slug}_schedules.csv", mime="text/csv", on_click="ignore", key="ct_schedules_csv",
    )


def explain() -> None:
    with st.expander("The schedules and how they are validated"):
        st.markdown("\n".join(f"- **{name}** — {line}" for name, line in SCHEDULE_LINES.items()))
        st.markdown(EXPLANATION)


def main() -> None:
    spec, shape = view_start(
        "Control",
        "How much intervention energy does it take to move a concept's readout by Δy? The least-energy "
        "multi-layer schedule of the LLV surrogate against uniform and single-layer heuristics, each "
        "validated in the full model.",
    )
    if shape is not None:
        n_layers, d = shape
        st.caption(f"`{spec.model}`: {depth(n_layers)}, hidden size {d}.")
        explain()
        dataset = dataset_picker("ct_ds")
        submitted, targets_text, settings = settings_form(d, dataset is not None)
        if (submitted or replaying()) and dataset is not None:
            shown = compute(spec, dataset, targets_text, settings)
            if shown is not None:
                st.session_state[RESULT_KEY] = shown
                st.session_state[SIZES_KEY] = settings.sizes
    result_or_hint(kept(RESULT_KEY, ControlResult), shape is not None,
                   lambda last: show_result(last, st.session_state.get(SIZES_KEY)),
                   "Choose a concept dataset and target shifts, then press **Compute schedules**.")


run_view(main)  # under app.py, also when Streamlit runs this file directly
